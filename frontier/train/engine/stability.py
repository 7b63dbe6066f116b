"""Keeping a run alive: vetoing bad optimizer steps, the NaN/inf guard, early stopping.

StepGate wraps the client optimizer's ``step`` (the inner optimizer that every DeepSpeed
wrapper, ZeRO or not, eventually calls) so the trainer can skip the update of a global batch
whose loss was non-finite on any rank: the weights and the Adam moments stay untouched, and
DeepSpeed's own bookkeeping (gradient zeroing, ZeRO buffers) runs as usual.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from frontier.config.engine import EarlyStoppingConfig, NanGuardConfig
from frontier.optim.fused_adamw import FusedAdamW
from frontier.train.checkpoint.state import TrainerState


class StepGate:
    """Vetoes the update of one step: on the host (``skip``) or by a device flag (``found_inf``).

    ``found_inf`` (a 0-dim or 1-element tensor on the params' device, nonzero: skip) is decided
    without a host sync, the way torch's GradScaler hands its flag to fused optimizers:
    FusedAdamW takes it as ``step(found_inf=...)``, torch's fused AdamW/Adam read it from the
    ``found_inf`` attribute GradScaler sets. Both then skip on the device, leaving weights,
    moments and step counts as they were. Other optimizers get the host decision (one sync).
    The flag must cover the gradients' finiteness: it replaces FusedAdamW's own check.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.skip = False
        self.found_inf: torch.Tensor | None = None
        self.vetoed = 0  # host-side vetoes only: a device skip is counted by the trainer's StepLog
        self.on_device = device_skip_supported(optimizer)
        inner_step = optimizer.step

        def gated_step(*args: Any, **kwargs: Any) -> Any:
            flag = self.found_inf
            if self.skip or (flag is not None and not self.on_device and bool(flag.reshape(()))):
                self.vetoed += 1
                return None
            if flag is None or not self.on_device:
                return inner_step(*args, **kwargs)
            if isinstance(optimizer, FusedAdamW):
                return inner_step(*args, found_inf=flag.reshape(1).float(), **kwargs)  # (1,) fp32
            optimizer.found_inf = flag.reshape(()).float()  # type: ignore[attr-defined]  # () fp32, as GradScaler's
            try:
                return inner_step(*args, **kwargs)
            finally:
                del optimizer.found_inf  # type: ignore[attr-defined]

        optimizer.step = gated_step  # type: ignore[method-assign]


def device_skip_supported(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` can skip a step on a device flag (FusedAdamW; torch's fused Adam/AdamW)."""
    if isinstance(optimizer, FusedAdamW):
        return True
    fused_torch = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
    return fused_torch and all(g.get("fused") for g in optimizer.param_groups)


class NanGuard:
    """Counts non-finite steps in the trainer state and decides when to roll back or give up."""

    def __init__(self, cfg: NanGuardConfig) -> None:
        self.cfg = cfg

    def observe(self, state: TrainerState, finite: bool) -> str:
        """Record one step; returns "ok", "skip" (step skipped) or "rollback" (streak reached)."""
        if finite:
            state.nan_streak = 0
            return "ok"
        state.nan_skipped += 1
        state.nan_streak += 1
        return "rollback" if state.nan_streak >= self.cfg.max_consecutive else "skip"

    def can_roll_back(self, state: TrainerState) -> bool:
        return state.rollbacks < self.cfg.max_rollbacks


class EarlyStopping:
    """Updates best val loss in the trainer state; `should_stop` after `patience` evals without improvement."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg

    def observe(self, state: TrainerState, val_loss: float) -> bool:
        """Record an eval at state.step; True when it is a new best (by more than min_delta)."""
        state.last_val_loss = val_loss
        best = state.best_val_loss
        improved = math.isfinite(val_loss) and (best is None or val_loss < best - self.cfg.min_delta)
        if improved:
            state.best_val_loss = val_loss
            state.best_step = state.step
            state.evals_since_best = 0
        else:
            state.evals_since_best += 1
        return improved

    def should_stop(self, state: TrainerState) -> bool:
        return self.cfg.patience > 0 and state.evals_since_best >= self.cfg.patience
