"""The train stage: DeepSpeed training of a causal LM from packed token shards.

Entry point: ``frontier.train.run.train(params, tokens_dir, tokenizer_dir, out_dir, checkpoints_dir)``
(also ``python -m frontier.train``). Modules, one job each:

  run          the stage: model, batches, run identity, micro-batch, export
  wiring       the one assembly of a run (engine, gate, checkpoint store, monitor, loop), shared with finetune
  loop         steps, evaluation, checkpoints, signals, NaN rollback, early stopping
  step         one optimizer step with the global-batch loss normalisation; evaluation pass
  data         batches as a pure function of (seed, step, rank)
  schedule     learning-rate schedules
  optimizer    weight-decay parameter groups, the client optimizer
  ds_config    the DeepSpeed config from params (+ a user JSON, conflicts reported)
  engine       deepspeed.initialize; weights-only checkpoint loads
  checkpoint   atomic, verified, pruned checkpoints; manifest: their sha256 manifest
  state        trainer state and RNG capture/restore (JSON)
  stability    step gate, NaN guard, early stopping
  signals      SIGTERM/SIGINT/SIGUSR1/SIGHUP -> save and exit with code 3
  distributed  process group from any launcher's environment
  monitor      progress bar, log lines, TensorBoard, live CSVs, profiler; system: CPU/RAM/disk/GPU thread
  alerts       alert rules -> alerts.jsonl; metrics: MFU and device peaks; export: the out_dir
"""
