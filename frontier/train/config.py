"""Schemas of the training loop and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config_fields import bounds


@dataclass
class ScheduleConfig:
    kind: Literal["constant", "linear", "cosine", "wsd", "polynomial"] = "cosine"
    warmup_steps: int = field(default=50, metadata=bounds(ge=0))
    min_lr_ratio: float = field(default=0.1, metadata=bounds(ge=0, le=1))
    decay_fraction: float = field(default=0.2, metadata=bounds(gt=0, le=1))  # wsd: final fraction that decays
    power: float = field(default=1.0, metadata=bounds(gt=0))  # polynomial


@dataclass
class CheckpointConfig:
    every_steps: int = field(default=0, metadata=bounds(ge=0))  # 0: off
    every_minutes: float = field(default=0.0, metadata=bounds(ge=0))  # 0: off
    keep_last: int = field(default=2, metadata=bounds(ge=1))
    keep_best: bool = True


@dataclass
class TrainConfig:
    micro_batch_size: int = field(default=16, metadata=bounds(ge=1))
    grad_accum_steps: int = field(default=1, metadata=bounds(ge=1))
    max_steps: int = field(default=600, metadata=bounds(ge=1))
    max_minutes: float = field(default=0.0, metadata=bounds(ge=0))  # 0: no wall-clock limit
    seq_len: int | None = field(default=None, metadata=bounds(ge=1))  # None: model.max_seq_len
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = field(default=0, metadata=bounds(ge=0, le=3))
    offload_optimizer: bool = False
    offload_params: bool = False
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))
    deepspeed_config: str | None = None  # a user DeepSpeed JSON that may override generated values
    document_aware: bool = False  # sample windows starting at document boundaries
    log_every: int = field(default=10, metadata=bounds(ge=1))
    eval_every: int = field(default=100, metadata=bounds(ge=0))  # 0: off
    eval_batches: int = field(default=8, metadata=bounds(ge=1))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str = "auto"  # auto | none | a checkpoint directory
