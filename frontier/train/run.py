"""The train stage: tokens -> a trained model (out_dir) with checkpoints in checkpoints_dir.

``train(params, tokens_dir, tokenizer_dir, out_dir, checkpoints_dir)`` is what the CLI,
Snakemake and DVC call, once per rank under a launcher (deepspeed / torchrun / srun / mpirun;
frontier.train.launch.distributed reads the rank from the environment). It resumes from
checkpoints_dir by default (train.resume: auto), trains, and writes out_dir atomically
(frontier.train.export). A stop signal saves a checkpoint and raises TrainingInterrupted
(exit code 3); rerunning the same command resumes. What is the train stage's own is here (the model
from params, the token batches, the run's identity and budget (the train: section), the export); the
micro-batch choice, engine (the engine: section), gate, checkpoint store, monitor and loop are
assembled by frontier.train.wiring, as for finetune.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontier.config import Params, to_dict
from frontier.config.engine import EngineConfig
from frontier.config.model import ModelConfig
from frontier.config.train import TrainConfig
from frontier.data.tokens import TokenShards
from frontier.errors import ConfigError, DataError
from frontier.model.build import build_model, shape_signature
from frontier.model.flops import matmul_parameters, model_flops_per_token
from frontier.model.loss import CausalLMWithLoss
from frontier.model.presets import resolve
from frontier.train.batches.batch_size import global_batch
from frontier.train.wiring import seed_all
from frontier.utils.hashing import sha256_file

if TYPE_CHECKING:
    from frontier.train.loop import Budget

log = logging.getLogger("frontier.train")


# Keys that do not change what a run computes: how it is logged, monitored, checkpointed and which
# (numerically equivalent) implementation runs. Everything else in the stage's sections does.
# activation_checkpointing recomputes the same values (dropout replayed), and compile computes them in
# fused kernels (equal within rounding: tests/train/test_compile.py), so a resume may switch either.
_OPERATIONAL = {
    "engine": ("monitor", "alerts", "activation_checkpointing", "compile"),
    "train": ("checkpoint", "resume", "log_every", "eval_every", "eval_batches", "profile", "max_minutes"),
    "optimizer": ("impl",),
}  # fmt: skip


# How a global batch is split (per rank, per micro-step) changes no sample of a step: the run is
# defined by the global batch instead, so resuming on another rank count continues the same run.
# (global_batch_size, read under micro_batch_size auto, is that global batch.)
_SPLIT = ("micro_batch_size", "grad_accum_steps", "global_batch_size")


def run_params(
    params: Params, inputs: list[Path], sections: tuple[str, ...] = ("model", "train"), *, global_batch: int
) -> dict[str, Any]:
    """What defines a run's result: the shared sections (seed, optimizer, schedule, engine), the stage's own
    `sections`, its global batch and the content of its input files (recorded in, and matched against,
    checkpoints)."""
    keys = ("seed", *sections, "optimizer", "schedule", "engine")
    out: dict[str, Any] = {k: _plain(getattr(params, k)) for k in keys}  # the sections read, one by one
    for section, keys in _OPERATIONAL.items():
        if section in out:
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    for section in ("train", "finetune"):
        if section in out:
            out[section] = {k: v for k, v in out[section].items() if k not in _SPLIT}
    out["global_batch"] = global_batch
    out["inputs"] = {f"{p.parent.name}/{p.name}": sha256_file(p) for p in inputs}
    return out


def _plain(value: Any) -> Any:
    return to_dict(value) if dataclasses.is_dataclass(value) else value


def _open_tokens(tokens_dir: Path) -> tuple[TokenShards, TokenShards]:
    train, val = TokenShards(tokens_dir / "train"), TokenShards(tokens_dir / "val")
    if val.vocab_size != train.vocab_size:
        raise DataError(f"{tokens_dir}: train vocab_size {train.vocab_size} != val vocab_size {val.vocab_size}")
    return train, val


def train_seq_len(model: ModelConfig, cfg: TrainConfig) -> int:
    """The training window: train.seq_len, else model.max_seq_len (a fresh model's context; with
    model.init_from, the window the user trains the checkpoint on). Never the checkpoint's own context (32,768
    for Qwen2.5) by default. ConfigError when it exceeds the model's context: model.max_seq_len for a fresh
    model, the checkpoint's max_position_embeddings with model.init_from (naming both)."""
    seq_len = cfg.seq_len or resolve(model).max_seq_len
    source = f"train.seq_len: {seq_len}" if cfg.seq_len else f"model.max_seq_len: {seq_len} (train.seq_len unset)"
    if not model.init_from:
        limit = resolve(model).max_seq_len
        if seq_len > limit:
            raise ConfigError(f"{source} exceeds the model's context model.max_seq_len={limit}")
        return seq_len
    from frontier.model.load import context_length, read_config

    limit = context_length(read_config(Path(model.init_from)))
    if limit is not None and seq_len > limit:
        raise ConfigError(
            f"{source} exceeds the context of model.init_from ({model.init_from}): its config.json has "
            f"max_position_embeddings={limit}; train on windows of at most {limit} tokens"
        )
    return seq_len


def train_budget(cfg: TrainConfig) -> Budget:
    """The loop's budget: the train section's own keys."""
    from frontier.train.loop import Budget

    return Budget("train", max_steps=cfg.max_steps, log_every=cfg.log_every, eval_every=cfg.eval_every,
                  checkpoint=cfg.checkpoint, resume=cfg.resume, max_minutes=cfg.max_minutes,
                  early_stopping=cfg.early_stopping, profile=cfg.profile)  # fmt: skip


def train(params: Params, tokens_dir: Path, tokenizer_dir: Path, out_dir: Path, checkpoints_dir: Path) -> dict:
    """Train per params; returns the final metrics (also in out_dir/metrics.json)."""
    from frontier.model.kernels import coverage_record
    from frontier.model.load import shape_twin
    from frontier.provenance import collect_provenance
    from frontier.train.batches.data import TrainBatches, WindowSampler, val_batches
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.export import export_run
    from frontier.train.wiring import assemble, placement, prepare_model, start_ranks

    tokens_dir, tokenizer_dir = Path(tokens_dir), Path(tokenizer_dir)
    out_dir, checkpoints_dir = Path(out_dir), Path(checkpoints_dir)
    cfg = params.train
    info = start_ranks()
    # what runs this training, taken now on this machine (a report rendered elsewhere shows this one)
    provenance = collect_provenance() if info.is_main else None
    train_tokens, val_tokens = _open_tokens(tokens_dir)

    seq_len = train_seq_len(params.model, cfg)  # before the model: a checkpoint's context is read, not loaded
    place = placement(params.engine, info)  # the run's precision; under ZeRO-3, partitioned as it is built
    seed_all(params.seed)  # identical initial weights on every rank
    lm = build_model(
        params.model, train_tokens.vocab_size,
        bos_id=train_tokens.bos_id, eos_id=train_tokens.eos_id, pad_id=train_tokens.pad_id,
        dtype=place.dtype, zero3_config=place.zero3_config,
    )  # fmt: skip
    coverage = prepare_model(lm, params.kernels, params.engine, seq_len=seq_len)
    shapes = shape_twin(lm)  # a partitioned model's shapes, on the meta device
    n_params = sum(p.numel() for p in {id(p): p for p in shapes.parameters()}.values())
    flops_per_token = model_flops_per_token(shapes, seq_len)
    module = CausalLMWithLoss(lm, params.kernels)
    identity = run_params(params, [tokens_dir / "train" / "meta.json", tokens_dir / "val" / "meta.json"],
                          global_batch=global_batch(cfg, info.world_size))  # fmt: skip
    wiring = assemble(module, params.engine, cfg, train_budget(cfg), params.optimizer, info, seed=params.seed,
                      seq_len=seq_len, checkpoints_dir=checkpoints_dir, identity=identity)  # fmt: skip

    begun = wiring.begin(model=shape_signature(lm))
    state, start = begun.state, begun.start
    if start is not None:
        log.info("resumed from %s at step %d", start, state.step)
        if state.seed is not None and state.seed != params.seed:
            log.warning("seed changed from %d (checkpoint) to %d: the data order changes from here", state.seed,
                        params.seed)  # fmt: skip
            state.seed = params.seed
    layout = wiring.layout
    if state.global_batch and state.global_batch != layout.global_batch:
        log.warning("global batch changed from %d (checkpoint) to %d: samples from step %d on differ from the "
                    "original run's", state.global_batch, layout.global_batch, state.step)  # fmt: skip
    val_sampler = WindowSampler(val_tokens, seq_len, params.seed + 1, cfg.document_aware) if cfg.eval_every else None
    trainer = wiring.run(
        begun,
        TrainBatches(WindowSampler(train_tokens, seq_len, params.seed, cfg.document_aware), layout),
        val_batches(val_sampler, layout, cfg.eval_batches) if val_sampler else [],
        LRSchedule(params.schedule, params.optimizer.lr, cfg.max_steps),
        seq_len=seq_len,
        flops_per_token=flops_per_token,
    )
    state, parts = trainer.state, trainer.p
    metrics = final_metrics(state, trainer.stop_reason, parts, params.engine, n_params=n_params,
                            matmul_params=matmul_parameters(shapes))  # fmt: skip
    metrics["batch"] = dataclasses.asdict(wiring.split)  # machine-dependent under auto: run.json, not metrics.json
    metrics["kernels"] = coverage_record(coverage)  # what was fused, module by module: run.json
    export_run(
        out_dir=out_dir, engine=wiring.engine, module=module, params=params, tokenizer_dir=tokenizer_dir,
        logs_dir=checkpoints_dir / "logs", state=state, metrics=metrics, info=info, provenance=provenance,
    )  # fmt: skip
    log.info("train: done (%s) at step %d; best val loss %s; model in %s", trainer.stop_reason, state.step,
             metrics["best_val_loss"], out_dir / "model")  # fmt: skip
    return metrics


def final_metrics(
    state: Any, stop_reason: str, parts: Any, engine: EngineConfig, *, n_params: int, matmul_params: int
) -> dict[str, Any]:
    from frontier.train.monitor.metrics import mfu

    finite = [r["loss"] for r in state.train_rows if r["loss"] == r["loss"] and abs(r["loss"]) != float("inf")]
    tps = state.tokens / state.wall_seconds if state.wall_seconds > 0 else 0.0
    info = parts.info
    return {
        "train_loss": finite[-1] if finite else None,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "final_val_loss": state.val_rows[-1]["val_loss"] if state.val_rows else None,
        "steps": state.step,
        "tokens": state.tokens,
        "target_tokens": state.target_tokens,
        "tokens_per_s": tps,
        "flops_per_token": parts.flops_per_token,
        "flops_per_s": parts.flops_per_token * tps,
        "mfu": mfu(parts.flops_per_token, tps, parts.peak_flops, info.world_size),
        "train_time_s": state.wall_seconds,
        "wall_time_s": state.elapsed_seconds,
        "params": n_params,
        "matmul_params": matmul_params,
        "nan_skipped": state.nan_skipped,
        "rollbacks": state.rollbacks,
        "stop_reason": stop_reason,
        "world_size": info.world_size,
        "global_batch": parts.batches.layout.global_batch,
        "seq_len": parts.seq_len,
        "precision": engine.precision,
        "zero_stage": engine.zero_stage,
        "device": str(info.device),
    }
