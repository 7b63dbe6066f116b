"""Schema of the report stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontier.config.fields import bounds


@dataclass
class ReportConfig:
    title: str = "Frontier run report"
    max_samples: int = field(default=12, metadata=bounds(ge=0))  # generation samples shown
    smoothing: float = field(default=0.9, metadata=bounds(ge=0, lt=1))  # EMA of the train-loss curve; 0: raw
    dpi: int = field(default=110, metadata=bounds(ge=50, le=400))
