"""The finetune stage: full, LoRA or QLoRA fine-tuning on prompt/response pairs (finetune.method).

The run is the pre-training machinery with another model and other batches, assembled by the same
code (frontier.train.wiring): the DeepSpeed engine (ZeRO 0-3), loss module (frontier.model.loss),
optimizer groups (every weight for full, the adapter's for lora/qlora: the base is frozen), training
loop with its NaN guard, checkpoints, exact resume and stop signals (frontier.train.loop, .checkpoint),
and monitoring (TensorBoard, CSV logs, alerts). What is finetune's own: the base (in the run's
precision, or quantized by bitsandbytes for qlora) and its adapter, the pairs' batches (right-padded per
micro-batch, or with finetune.packing packed into windows of max_seq_len, each example kept to itself:
frontier.finetune.packing; held-out pairs stay right-padded), the held-out score before and after, and the
export (frontier.finetune.export). Engine settings (precision, ZeRO stage, clipping, activation
checkpointing, compile, NaN guard, alerts, monitoring) come from the engine: section, shared with train;
the method, adapter, step budget, batch (micro_batch_size: auto included), learning rate, weight decay
and warmup from the finetune: section; nothing from train:. The fused kernels are swapped in as in
pre-training (frontier.model.kernels; they call the projection modules, so the adapter's layers stay in
the path) before the adapter is attached.

out_dir::

    adapter/             lora, qlora: adapter_config.json + adapter_model.safetensors (peft), the tokenizer,
                         and for qlora base_quantization.json (how the base was quantized, for merge)
    model/               full: the fine-tuned model (HF directory, tokenizer included)
    metrics.json         base vs fine-tuned loss on the held-out pairs, counts, padding fraction unpacked vs packed
    speed.json           training time
    run.json             method, LoRA settings, base model, stop reason
    plots/train.csv      step, loss, lr, grad_norm, tokens_per_s
    plots/val.csv        step, val_loss (the held-out pairs)
    tb/                  TensorBoard events
    params.resolved.yaml
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frontier.config import Params
    from frontier.config.finetune import FinetuneConfig
    from frontier.train.loop import Budget

log = logging.getLogger("frontier.finetune")


def run_budget(ft: FinetuneConfig) -> Budget:
    """The loop's budget, all finetune's: the held-out loss every eval_every steps (0: at the end only), a
    checkpoint every checkpoint_every steps and at the end (the newest two and the best kept); no wall-clock
    limit, early stopping or profiler window."""
    from frontier.config.checkpoint import CheckpointConfig
    from frontier.train.loop import Budget

    return Budget("finetune", max_steps=ft.max_steps, log_every=ft.log_every, eval_every=ft.eval_every or ft.max_steps,
                  checkpoint=CheckpointConfig(every_steps=ft.checkpoint_every), resume=ft.resume)  # fmt: skip


def finetune(params: Params, base_model_dir: Path, sft_dir: Path, out_dir: Path, checkpoints_dir: Path) -> dict:
    """Stage: fine-tune `base_model_dir` on sft_dir/train.jsonl per finetune.method, score sft_dir/heldout.jsonl
    before and after.

    The train stage's assembly (frontier.train.wiring) with a base model (and its adapter), the pairs'
    batches and finetune's optimizer settings; full trains every weight, lora/qlora only the adapter."""
    from frontier.eval.generate import model_context
    from frontier.eval.model_io import load_tokenizer
    from frontier.finetune.adapter import (
        adapted_modules,
        attach_lora,
        check_targets,
        load_base,
        trainable_parameters,
    )
    from frontier.finetune.dataset import ExampleSampler, encode_all, eval_batches, read_records, split_file
    from frontier.finetune.export import export_finetune
    from frontier.finetune.packing import (
        PackedSampler,
        check_document_masking,
        packed_real_fraction,
        padded_real_fraction,
    )
    from frontier.model.flops import model_flops_per_token
    from frontier.model.kernels import coverage_record
    from frontier.model.load import shape_twin
    from frontier.model.loss import CausalLMWithLoss
    from frontier.provenance import record_stage
    from frontier.train.batches.batch_size import global_batch
    from frontier.train.batches.data import TrainBatches
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.engine.step import evaluate
    from frontier.train.run import run_params
    from frontier.train.wiring import assemble, placement, prepare_model, seed_all, start_ranks

    ft = params.finetune
    base_model_dir, sft_dir = Path(base_model_dir), Path(sft_dir)
    out_dir, checkpoints_dir = Path(out_dir), Path(checkpoints_dir)
    budget = run_budget(ft)
    info = start_ranks()

    tokenizer = load_tokenizer(base_model_dir)
    seed_all(params.seed)  # the same LoRA initialisation on every rank
    place = placement(params.engine, info)
    lm = load_base(base_model_dir, ft.quantize, info.device, place.dtype,
                   zero3_config=None if ft.adapter else place.zero3_config)  # fmt: skip
    max_len = ft.max_seq_len or model_context(lm) or 1024
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train_examples, held_examples = (
        encode_all(tokenizer, read_records(split_file(sft_dir, split), tokenizer, ft.train_on), max_len, sft_dir)
        for split in ("train", "heldout")
    )

    # the rows the model sees: the longest pair, or packed windows of max_len (the window a sliding one meets)
    train_len = max_len if ft.packing else max(e.input_ids.size for e in train_examples)
    coverage = prepare_model(lm, params.kernels, params.engine, seq_len=train_len)  # checkpointing: engine's
    if ft.packing:
        check_document_masking(lm)  # an attention that cannot keep examples apart is refused, never mixed
    peft_model = None
    if ft.adapter:
        check_targets(lm, ft, fused_head=params.kernels.fused_linear_cross_entropy)
        peft_model = attach_lora(lm, ft)  # injects the adapter into `lm` in place
        log.info("finetune: %s r=%d on %s", ft.method, ft.r, ", ".join(adapted_modules(lm)))
    shapes = shape_twin(lm)  # a partitioned full model's shapes, on the meta device (all of it trains)
    trainable, total = trainable_parameters(lm if shapes is lm else shapes)
    log.info("finetune: %s, %d trainable of %d parameters", ft.method, trainable, total)
    module = CausalLMWithLoss(lm, params.kernels)
    opt_cfg = dataclasses.replace(params.optimizer, lr=ft.lr, weight_decay=ft.weight_decay)
    # A changed base model, data or params starts a fresh fine-tune instead of resuming a stale one.
    train_data = split_file(sft_dir, "train")  # a file, or the files of a save_to_disk directory
    data_files = sorted(f for f in train_data.rglob("*") if f.is_file()) if train_data.is_dir() else [train_data]
    weights = sorted(base_model_dir.glob("*.safetensors")) + data_files
    ft_run = run_params(params, weights, sections=("finetune",), global_batch=global_batch(ft, info.world_size))
    seq_len = train_len  # the longest pair, or the packed window: what auto sizes the batch for
    wiring = assemble(module, params.engine, ft, budget, opt_cfg, info, seed=params.seed, seq_len=seq_len,
                      checkpoints_dir=checkpoints_dir, identity=ft_run)  # fmt: skip

    layout = wiring.layout
    # held-out pairs stay right-padded (the same loss as packed: each pair is scored alone either way)
    heldout = eval_batches(held_examples, layout, pad_id)
    packed = PackedSampler(train_examples, max_len, params.seed, pad_id) if ft.packing else None
    real_unpacked = padded_real_fraction(train_examples, params.seed, layout.micro_batch_size)
    real_packed = packed_real_fraction(packed or PackedSampler(train_examples, max_len, params.seed, pad_id))
    log.info("finetune: real tokens %.1f%% right-padded (micro-batch %d), %.1f%% packed into windows of %d%s",
             100 * real_unpacked, layout.micro_batch_size, 100 * real_packed, max_len,
             " (packing on)" if ft.packing else " (packing off)")  # fmt: skip
    # the base model, whatever state a resume brings: evaluated before begin() loads a checkpoint
    with peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext():
        base_loss = evaluate(wiring.engine, heldout, info)

    begun = wiring.begin()
    if begun.start is not None:
        log.info("finetune: resumed from %s at step %d", begun.start, begun.state.step)
    schedule_cfg = dataclasses.replace(params.schedule, warmup_steps=ft.warmup_steps)
    trainer = wiring.run(
        begun,
        TrainBatches(packed or ExampleSampler(train_examples, params.seed, pad_id), layout),
        heldout,
        LRSchedule(schedule_cfg, ft.lr, budget.max_steps),
        seq_len=seq_len,
        flops_per_token=model_flops_per_token(shapes, max_len),
    )
    state = trainer.state
    tuned_loss = evaluate(wiring.engine, heldout, info)

    metrics: dict[str, Any] = {
        "base_heldout_loss": base_loss,
        "finetuned_heldout_loss": tuned_loss,
        "heldout_loss_change": tuned_loss - base_loss,
        "heldout_pairs": len(held_examples),
        "train_pairs": len(train_examples),
        "packing": ft.packing,
        "padding_fraction_unpacked": 1.0 - real_unpacked,  # one epoch of right-padded micro-batches
        "padding_fraction_packed": 1.0 - real_packed,  # one epoch of packed windows of max_seq_len
        "steps": state.step,
        "stop_reason": trainer.stop_reason,
        "train_loss": state.train_rows[-1]["loss"] if state.train_rows else None,
        "trainable_params": trainable,
        "total_params": total,
        "method": ft.method,
        "quantize": ft.quantize,
        "precision": params.engine.precision,
        "zero_stage": params.engine.zero_stage,
        # relative to this output (as in the adapter's config): nothing a run exports names a machine path
        "base_model": os.path.relpath(base_model_dir.resolve(), Path(out_dir).resolve()),
        "train_time_s": state.wall_seconds,
        "batch": dataclasses.asdict(wiring.split),  # machine-dependent under auto: run.json, not metrics.json
        "kernels": coverage_record(coverage),  # what was fused, module by module: run.json
    }
    if peft_model is not None:
        metrics["lora"] = {"r": ft.r, "alpha": ft.alpha, "dropout": ft.dropout, "target_modules": ft.target_modules,
                           "adapted_modules": adapted_modules(lm)}  # fmt: skip
    log.info("finetune: held-out loss %.4f -> %.4f", base_loss, tuned_loss)
    export_finetune(out_dir, peft_model, module, wiring.engine, params, base_model_dir, begun.logs_dir, state,
                    metrics, info, record=lambda d: record_stage(params, d, "finetune"))  # fmt: skip
    return metrics
