"""The root of params.yaml: a seed and one section per stage family (each section a module of this package).

engine: and kernels: are shared by the train and finetune stages; train: and finetune: are each one's run budget.
"""

from __future__ import annotations

import dataclasses

from frontier.config.data import PrepareConfig, TokenizeConfig, TokenizerConfig
from frontier.config.engine import EngineConfig, ScheduleConfig
from frontier.config.evaluate import EvaluateConfig
from frontier.config.fields import bounds
from frontier.config.finetune import FinetuneConfig
from frontier.config.kernels import KernelsConfig
from frontier.config.launch import LaunchConfig
from frontier.config.model import ModelConfig
from frontier.config.optimizer import OptimizerConfig
from frontier.config.preference import PreferenceConfig
from frontier.config.report import ReportConfig
from frontier.config.train import TrainConfig


@dataclasses.dataclass
class Params:
    """Everything params.yaml may hold: a seed and one section per stage family."""

    seed: int = dataclasses.field(default=1337, metadata=bounds(ge=0, le=2**32 - 1))  # numpy seeds are 32-bit
    prepare: PrepareConfig = dataclasses.field(default_factory=PrepareConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = dataclasses.field(default_factory=TokenizeConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    kernels: KernelsConfig = dataclasses.field(default_factory=KernelsConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    preference: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)

    def validate(self) -> None:
        """Rules that span sections. schedule.warmup_steps is train's (finetune warms up over finetune.warmup_steps)."""
        if self.schedule.warmup_steps > self.train.max_steps:
            raise ValueError(
                f"schedule.warmup_steps: {self.schedule.warmup_steps} is more than train.max_steps="
                f"{self.train.max_steps}; the learning rate would never reach optimizer.lr"
            )
