"""The one assembly of a training run, shared by the train and finetune stages.

A stage brings what is its own: the model (built from params, or a base with an adapter attached),
the optimizer settings, the batches, and what identifies the run for a resume. Everything else is
put together here, once, the same way for both:

    start_ranks()    the rank from the launcher's environment, and the log lines (setup_logging)
    seed_all()       python's, numpy's and torch's RNGs: the weights alike on every rank
    prepare_model()  the fused kernels and activation checkpointing on the model
    assemble()       the client optimizer over the trainable parameters, the NaN gate, the DeepSpeed
                     engine, compile, and the per-rank dropout streams          -> Wiring
    Wiring.begin()   the checkpoint store and its resume                        -> Begun
    Wiring.run()     the monitor and the loop                                   -> Trainer

They are separate calls because a stage works between them: train chooses its micro-batch before
assembling and records it after the resume; finetune scores the base model before resuming.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from torch import nn

    from frontier.config import Params
    from frontier.config.optimizer import OptimizerConfig
    from frontier.config.train import TrainConfig
    from frontier.model.loss import CausalLMWithLoss
    from frontier.train.batches.data import Batch, Layout, TrainBatches
    from frontier.train.checkpoint.checkpoint import CheckpointStore
    from frontier.train.checkpoint.state import TrainerState
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.engine.stability import StepGate
    from frontier.train.launch.distributed import DistInfo
    from frontier.train.loop import Trainer


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


def prepare_model(lm: nn.Module, params: Params, cfg: TrainConfig) -> nn.Module:
    """Swap in the fused kernels (params.kernels) and, per cfg, checkpoint activations; the weights and
    their names are unchanged. Before an adapter is attached: the kernels call the projection modules,
    so the adapter's layers stay in the path."""
    from frontier.model.kernels import apply_kernels

    lm = apply_kernels(lm, params.kernels)
    if cfg.activation_checkpointing:
        from frontier.model.checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(lm)
    return lm


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
    """A module on its engine, ready to train: what assemble() made."""

    cfg: TrainConfig
    info: DistInfo
    module: CausalLMWithLoss
    engine: Any  # deepspeed.DeepSpeedEngine
    gate: StepGate

    @property
    def layout(self) -> Layout:
        """How this rank's share of each step is cut (micro-batches x accumulation x ranks)."""
        from frontier.train.batches.data import Layout

        return Layout(self.cfg.micro_batch_size, self.cfg.grad_accum_steps, self.info.world_size, self.info.rank)

    def begin(
        self, checkpoints_dir: Path, run_params: dict[str, Any], *, seed: int, model: dict[str, Any] | None = None
    ) -> Begun:
        """Open the checkpoint store and resume per cfg.resume: a checkpoint of the same `run_params` (and
        model shape `model`, where given) is loaded into the engine; otherwise the run starts fresh."""
        from frontier.train.checkpoint.checkpoint import CheckpointStore
        from frontier.train.checkpoint.state import TrainerState

        store = CheckpointStore(checkpoints_dir, self.info, model=model, run_params=run_params)
        fresh = TrainerState(seed=seed, world_size=self.info.world_size, model=store.model)
        state, start = store.begin(self.cfg.resume, self.engine, fresh)
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
        """Train from `begun` to cfg.max_steps (or a stop); the finished Trainer holds the state and why it stopped."""
        from frontier.train.loop import LoopParts, Trainer
        from frontier.train.monitor.metrics import device_peak_flops
        from frontier.train.monitor.monitor import RunMonitor

        cfg, info = self.cfg, self.info
        peak_tflops = cfg.monitor.peak_tflops
        parts = LoopParts(
            cfg=cfg,
            info=info,
            engine=self.engine,
            gate=self.gate,
            store=begun.store,
            batches=batches,
            val=val,
            schedule=schedule,
            monitor=RunMonitor(cfg, begun.logs_dir, info, begun.state),
            seq_len=seq_len,
            flops_per_token=flops_per_token,
            peak_flops=peak_tflops * 1e12 if peak_tflops else device_peak_flops(info.device, cfg.precision),
        )
        # a resumed run's checkpoint exists already: the loop does not save it again
        trainer = Trainer(parts, begun.state, saved_step=begun.state.step if begun.start is not None else None)
        trainer.run()
        return trainer


def assemble(
    module: CausalLMWithLoss, cfg: TrainConfig, optimizer_cfg: OptimizerConfig, info: DistInfo, *, seed: int
) -> Wiring:
    """Put `module` on a DeepSpeed engine with the client optimizer over its trainable parameters (a frozen
    base stays out of it), the NaN gate, and compile per cfg; then seed each rank's own dropout stream."""
    from frontier.train.engine.ds_config import build_ds_config
    from frontier.train.engine.engine import make_engine
    from frontier.train.engine.optimizer import build_client_optimizer
    from frontier.train.engine.stability import StepGate

    optimizer = build_client_optimizer(module, optimizer_cfg)
    gate = StepGate(optimizer)
    engine = make_engine(module, optimizer, build_ds_config(cfg, info.world_size))
    if cfg.compile:
        from frontier.model.compile import compile_for_training

        compile_for_training(module, zero_stage=cfg.zero_stage)
    seed_all(seed + 1000 * info.rank)  # distinct dropout streams per rank (the weights were seeded alike)
    return Wiring(cfg=cfg, info=info, module=module, engine=engine, gate=gate)
