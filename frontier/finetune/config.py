"""Schema of the LoRA fine-tune stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontier.config_fields import bounds


@dataclass
class FinetuneConfig:
    r: int = field(default=8, metadata=bounds(ge=1))
    alpha: float = field(default=16.0, metadata=bounds(gt=0))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    max_steps: int = field(default=100, metadata=bounds(ge=1))
    micro_batch_size: int = field(default=8, metadata=bounds(ge=1))
