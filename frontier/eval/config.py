"""Schema of the evaluate stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontier.config_fields import bounds


@dataclass
class EvaluateConfig:
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    seq_len: int | None = field(default=None, metadata=bounds(ge=1))  # None: the model's context
    max_tokens: int | None = field(default=None, metadata=bounds(ge=1))  # None: the whole val split
