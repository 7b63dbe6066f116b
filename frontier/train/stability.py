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

from frontier.train.config import EarlyStoppingConfig, NanGuardConfig
from frontier.train.state import TrainerState


class StepGate:
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.skip = False
        self.vetoed = 0
        inner_step = optimizer.step

        def gated_step(*args: Any, **kwargs: Any) -> Any:
            if self.skip:
                self.vetoed += 1
                return None
            return inner_step(*args, **kwargs)

        optimizer.step = gated_step  # type: ignore[method-assign]


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
