"""Schema of the optimizer (AdamW in three implementations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config_fields import bounds


@dataclass
class OptimizerConfig:
    impl: Literal["auto", "frontier", "torch", "deepspeed"] = "auto"  # auto: the fastest available
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    beta1: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    beta2: float = field(default=0.95, metadata=bounds(ge=0, lt=1))
    eps: float = field(default=1e-8, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.1, metadata=bounds(ge=0))
    no_decay: list[str] = field(default_factory=lambda: ["norm", "bias", "embedding"])
    state_dtype: Literal["fp32", "bf16"] = "fp32"  # frontier impl only
