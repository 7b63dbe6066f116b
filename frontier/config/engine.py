"""Schemas of the learning-rate schedule and of the step's stability rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds


@dataclass
class ScheduleConfig:
    """Learning rate per optimizer step (see frontier.train.engine.schedule for the exact formulas).

    The peak is optimizer.lr; warmup rises linearly over `warmup_steps`; the floor is
    ``min_lr_ratio * optimizer.lr``, reached at train.max_steps.
    """

    kind: Literal["constant", "linear", "cosine", "wsd", "polynomial"] = "cosine"
    warmup_steps: int = field(default=30, metadata=bounds(ge=0))
    min_lr_ratio: float = field(default=0.1, metadata=bounds(ge=0, le=1))
    decay_fraction: float = field(default=0.2, metadata=bounds(gt=0, le=1))  # wsd: final fraction that decays
    power: float = field(default=1.0, metadata=bounds(gt=0))  # polynomial


@dataclass
class NanGuardConfig:
    """A non-finite loss skips the optimizer step; `max_consecutive` in a row roll back to the newest
    checkpoint with the learning rate multiplied by `lr_factor`, at most `max_rollbacks` times."""

    max_consecutive: int = field(default=3, metadata=bounds(ge=1))
    max_rollbacks: int = field(default=2, metadata=bounds(ge=0))
    lr_factor: float = field(default=0.5, metadata=bounds(gt=0, le=1))


@dataclass
class EarlyStoppingConfig:
    """Stop when the val loss has not improved by more than `min_delta` for `patience` evaluations."""

    patience: int = field(default=0, metadata=bounds(ge=0))  # 0: off
    min_delta: float = field(default=0.0, metadata=bounds(ge=0))
