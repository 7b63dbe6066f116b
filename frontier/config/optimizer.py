"""Schema of the optimizer (AdamW in three implementations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds


@dataclass
class OptimizerConfig:
    # frontier: FusedAdamW on the C++/CUDA extension; torch: torch.optim.AdamW (fused where it can);
    # deepspeed: DeepSpeed's CPU / fused Adam; auto: frontier when the extension loads, else torch.
    impl: Literal["auto", "frontier", "torch", "deepspeed"] = "auto"
    lr: float = field(default=3e-3, metadata=bounds(gt=0, le=10))
    beta1: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    beta2: float = field(default=0.95, metadata=bounds(ge=0, lt=1))
    eps: float = field(default=1e-8, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.1, metadata=bounds(ge=0))
    # substrings of a parameter's name or of its module's class name (lower case) exempt from decay
    no_decay: list[str] = field(default_factory=lambda: ["norm", "bias", "embedding"])
    # bf16: exp_avg / exp_avg_sq in bf16 with stochastic rounding (frontier impl only)
    state_dtype: Literal["fp32", "bf16"] = "fp32"
    # frontier impl: skip (and report) a step whose grads hold inf/NaN; costs one extra read of the grads
    check_finite: bool = True
    seed: int = 0  # frontier impl: stream of the stochastic rounding of bf16 states

    def validate(self) -> None:
        if self.state_dtype == "bf16" and self.impl in ("torch", "deepspeed"):
            raise ValueError(f"state_dtype: bf16 optimizer states need impl frontier or auto, not {self.impl}")
