"""The train stage: DeepSpeed training of a causal LM from packed token shards.

Entry point: ``frontier.train.run.train(params, tokens_dir, tokenizer_dir, out_dir, checkpoints_dir)``
(also ``python -m frontier.train``). On top, what assembles a run:

  run      the stage: model, batches, run identity, micro-batch, export
  wiring   the one assembly of a run (engine, gate, checkpoint store, monitor, loop), shared with finetune
  loop     steps, evaluation, checkpoints, signals, NaN rollback, early stopping
  export   the finished run's out_dir (HF model, metrics, curves)
  config   the train: section (the run's budget)

Below it, one room per concern; a room imports only from the rooms listed after it:

  monitor/     progress, TensorBoard, trackers, alerts, system sampling, MFU and metrics files
  engine/      the DeepSpeed engine, its config, the optimizer, one step, the LR schedule, NaN gating
  checkpoint/  atomic, verified, resharded checkpoints, their manifest and the trainer state
  batches/     batches as a pure function of (seed, step, rank), prefetch, the micro-batch choice
  launch/      starting ranks, the process group, the launcher's environment, stop signals
"""
