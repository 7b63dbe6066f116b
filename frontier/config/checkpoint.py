"""When checkpoints are written and how many stay (train.checkpoint; a fine-tune sets only every_steps,
finetune.checkpoint_every, and keeps the other defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontier.config.fields import bounds


@dataclass
class CheckpointConfig:
    """When checkpoints are written (besides the end of the run and a stop signal) and how many stay."""

    every_steps: int = field(default=0, metadata=bounds(ge=0))  # 0: off
    every_minutes: float = field(default=0.0, metadata=bounds(ge=0))  # 0: off
    keep_last: int = field(default=2, metadata=bounds(ge=1))
    keep_best: bool = True  # also save when the val loss improves, and keep that checkpoint
