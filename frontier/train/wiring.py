"""The one assembly of a training run, shared by the train and finetune stages.

A stage brings what is its own: the model (built from params, or a base with an adapter attached),
its section's batch keys and budget (train:, finetune:; the loop's Budget), the optimizer settings,
the batches, and what identifies the run for a resume. The engine: and kernels: sections are shared.
Everything else is put together here, once, the same way for both:

    start_ranks()    the rank from the launcher's environment, and the log lines (setup_logging)
    placement()      how the stage builds its model for the engine: the weights' dtype (engine.precision)
                     and, under ZeRO-3, the DeepSpeed config it is partitioned under as it is constructed
    seed_all()       python's, numpy's and torch's RNGs: the weights alike on every rank
    prepare_model()  the fused kernels (kernels:) and activation checkpointing (engine:) on the model
    assemble()       the micro-batch and accumulation (micro_batch_size auto: chosen by
                     frontier.train.batches.batch_size), the client optimizer over the trainable
                     parameters, the NaN gate, the DeepSpeed engine, compile, and the per-rank
                     dropout streams                                            -> Wiring
    Wiring.begin()   the checkpoint store and its resume; an auto choice recorded -> Begun
    Wiring.run()     the monitor and the loop                                   -> Trainer

They are separate calls because a stage works between them: finetune scores the base model before
resuming.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from frontier.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from frontier.config.engine import EngineConfig
    from frontier.config.kernels import KernelsConfig
    from frontier.config.optimizer import OptimizerConfig
    from frontier.config.train import BatchConfig
    from frontier.model.kernels import KernelCoverage
    from frontier.model.loss import CausalLMWithLoss
    from frontier.train.batches.batch_size import Split
    from frontier.train.batches.data import Batch, Layout, TrainBatches
    from frontier.train.checkpoint.checkpoint import CheckpointStore
    from frontier.train.checkpoint.state import TrainerState
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.engine.stability import StepGate
    from frontier.train.launch.distributed import DistInfo
    from frontier.train.loop import Budget, Trainer

log = logging.getLogger("frontier.train")


def setup_logging(rank: int) -> None:
    """INFO lines on stderr from rank 0 (warnings from every rank), unless the caller configured logging."""
    logger = logging.getLogger("frontier")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its per-save/-load INFO lines are noise here


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch RNGs (per rank callers add a rank offset)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_ranks() -> DistInfo:
    """This process's place among the ranks (read from the launcher's environment) and its log lines."""
    from frontier.train.launch.distributed import init_distributed

    info = init_distributed()
    setup_logging(info.rank)
    return info


@dataclass(frozen=True)
class Placement:
    """How a stage builds its model, decided from the engine: section before the model exists."""

    dtype: torch.dtype  # the weights' dtype: engine.precision's (a bf16 run never holds fp32 weights)
    zero3_config: dict[str, Any] | None  # ZeRO-3: the DeepSpeed config the model is constructed under


def _check_precision(engine_cfg: EngineConfig, info: DistInfo) -> None:
    if engine_cfg.precision == "fp16" and info.device.type != "cuda":
        raise ConfigError(
            "engine.precision: fp16 needs a CUDA device (DeepSpeed has no fp16 on the CPU); use fp32 or bf16"
        )


def placement(engine_cfg: EngineConfig, info: DistInfo) -> Placement:
    """What the model is built as for `engine_cfg` on these ranks (frontier.model.build / frontier.model.load)."""
    from frontier.model.load import precision_dtype
    from frontier.train.engine.ds_config import construction_config

    _check_precision(engine_cfg, info)
    return Placement(precision_dtype(engine_cfg.precision), construction_config(engine_cfg, info.world_size))


def prepare_model(
    lm: nn.Module, kernels: KernelsConfig, engine: EngineConfig, *, seq_len: int | None = None
) -> KernelCoverage:
    """Route `lm`'s modules through the fused kernels (`kernels`, decided from each module's structure; `seq_len`,
    the training window, decides whether a sliding window binds) and, per engine.activation_checkpointing,
    checkpoint activations; in place: the weights and their names are unchanged. Before an adapter is attached:
    the kernels call the projection modules, so the adapter's layers stay in the path. Returns what was fused,
    also logged as one line (``kernels: rms_norm 17/17, ...``) for the run's log; run.json keeps it too."""
    from frontier.model.kernels import route_kernels

    coverage = route_kernels(lm, kernels, seq_len=seq_len)
    log.info("kernels: %s", coverage.line())
    if engine.activation_checkpointing:
        from frontier.model.checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(lm)
    return coverage


@dataclass
class Begun:
    """Where a run starts: its checkpoint store, its state, and the checkpoint resumed from (None: fresh)."""

    store: CheckpointStore
    state: TrainerState
    start: Path | None

    @property
    def logs_dir(self) -> Path:
        return self.store.root / "logs"


@dataclass
class Wiring:
    """A module on its engine, ready to train: what assemble() made, and the run it was made for."""

    engine_cfg: EngineConfig  # the engine: section
    budget: Budget  # the stage's
    split: Split  # the run's micro-batch and accumulation (resolved from the stage's batch keys)
    info: DistInfo
    module: CausalLMWithLoss
    engine: Any  # deepspeed.DeepSpeedEngine
    gate: StepGate
    checkpoints_dir: Path
    identity: dict[str, Any]  # what defines the run (frontier.train.run.run_params): a resume must match it
    seed: int

    @property
    def layout(self) -> Layout:
        """How this rank's share of each step is cut (micro-batches x accumulation x ranks)."""
        from frontier.train.batches.data import Layout

        return Layout(self.split.micro_batch_size, self.split.grad_accum_steps, self.info.world_size, self.info.rank)

    def begin(self, *, model: dict[str, Any] | None = None) -> Begun:
        """Open the checkpoint store and resume per the budget's resume: a checkpoint of the same identity (and
        model shape `model`, where given) is loaded into the engine; otherwise the run starts fresh. A
        micro-batch chosen for micro_batch_size auto is recorded for the run's resumes."""
        from frontier.train.batches.batch_size import record_key, write_record
        from frontier.train.checkpoint.checkpoint import CheckpointStore
        from frontier.train.checkpoint.state import TrainerState

        store = CheckpointStore(self.checkpoints_dir, self.info, model=model, run_params=self.identity)
        fresh = TrainerState(seed=self.seed, world_size=self.info.world_size, model=store.model)
        state, start = store.begin(self.budget.resume, self.engine, fresh)
        if self.split.chosen_by != "params" and self.info.is_main:  # after begin: a fresh run's archiving is done
            write_record(self.checkpoints_dir / "logs", record_key(self.identity, self.info.world_size), self.split)
        return Begun(store, state, start)

    def run(
        self,
        begun: Begun,
        batches: TrainBatches,
        val: list[Batch],
        schedule: LRSchedule,
        *,
        seq_len: int,
        flops_per_token: float,
    ) -> Trainer:
        """Train from `begun` to the budget's max_steps (or a stop); the finished Trainer holds the state and why
        it stopped."""
        from frontier.train.loop import LoopParts, Trainer
        from frontier.train.monitor.metrics import device_peak_flops
        from frontier.train.monitor.monitor import RunMonitor

        ec, budget, info = self.engine_cfg, self.budget, self.info
        peak_tflops = ec.monitor.peak_tflops
        monitor = RunMonitor(ec.monitor, ec.alerts, begun.logs_dir, info, begun.state, max_steps=budget.max_steps,
                             profile=budget.profile)  # fmt: skip
        parts = LoopParts(
            budget=budget,
            nan_guard=ec.nan_guard,
            info=info,
            engine=self.engine,
            gate=self.gate,
            store=begun.store,
            batches=batches,
            val=val,
            schedule=schedule,
            monitor=monitor,
            seq_len=seq_len,
            flops_per_token=flops_per_token,
            peak_flops=peak_tflops * 1e12 if peak_tflops else device_peak_flops(info.device, ec.precision),
        )
        # a resumed run's checkpoint exists already: the loop does not save it again
        trainer = Trainer(parts, begun.state, saved_step=begun.state.step if begun.start is not None else None)
        trainer.run()
        return trainer


def assemble(
    module: CausalLMWithLoss,
    engine_cfg: EngineConfig,
    batch: BatchConfig,
    budget: Budget,
    optimizer_cfg: OptimizerConfig,
    info: DistInfo,
    *,
    seed: int,
    seq_len: int,
    checkpoints_dir: Path,
    identity: dict[str, Any],
) -> Wiring:
    """Resolve the run's micro-batch from `batch` (the stage's section: its numbers, or chosen for
    micro_batch_size auto for samples of `seq_len` tokens, reusing the choice recorded in `checkpoints_dir`
    for the run `identity`), then put `module` on a DeepSpeed engine (`engine_cfg`) with the client optimizer
    over its trainable parameters (a frozen base stays out of it), the NaN gate, and compile per engine_cfg;
    then seed each rank's own dropout stream."""
    from frontier.train.batches.batch_size import resolve_split
    from frontier.train.engine.ds_config import build_ds_config
    from frontier.train.engine.engine import make_engine
    from frontier.train.engine.optimizer import build_client_optimizer
    from frontier.train.engine.stability import StepGate

    _check_precision(engine_cfg, info)
    with _whole_for_measuring(module, batch):
        split = resolve_split(
            batch, module, info, seq_len=seq_len, precision=engine_cfg.precision, zero_stage=engine_cfg.zero_stage,
            state_bytes=2 if optimizer_cfg.state_dtype == "bf16" else 4, logs_dir=checkpoints_dir / "logs",
            identity=identity, resume=budget.resume, section=budget.stage,
        )  # fmt: skip
    optimizer = build_client_optimizer(module, optimizer_cfg)
    gate = StepGate(optimizer)
    ds_config = build_ds_config(engine_cfg, info.world_size, micro_batch_size=split.micro_batch_size,
                                grad_accum_steps=split.grad_accum_steps, section=budget.stage)  # fmt: skip
    engine = make_engine(module, optimizer, ds_config)
    if engine_cfg.compile:
        from frontier.model.compile import compile_for_training

        compile_for_training(module, zero_stage=engine_cfg.zero_stage)
    seed_all(seed + 1000 * info.rank)  # distinct dropout streams per rank (the weights were seeded alike)
    return Wiring(engine_cfg=engine_cfg, budget=budget, split=split, info=info, module=module, engine=engine,
                  gate=gate, checkpoints_dir=Path(checkpoints_dir), identity=identity, seed=seed)  # fmt: skip


def _whole_for_measuring(module: nn.Module, batch: BatchConfig) -> contextlib.AbstractContextManager[Any]:
    """Under micro_batch_size auto, a model partitioned at construction (ZeRO-3) is gathered while the choice
    measures it (a forward of one sample outside the engine, and its parameter counts): a passing full copy
    per rank, in the run's precision. A given micro-batch measures nothing."""
    from frontier.model.load import is_partitioned

    if batch.micro_batch_size != "auto" or not is_partitioned(module):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
