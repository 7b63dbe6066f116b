"""Schemas of the train: section (the pre-training run's budget) and of the batch both stages share.

How a step runs (precision, ZeRO, clipping, compile, NaN guard, alerts, monitoring) is the engine:
section (frontier.config.engine), shared with finetune; what is here is the train stage's own: its
batch, length, evaluation and checkpoint cadence, resume, and what counts its steps or evaluations
(early stopping, the profiler window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from frontier.config.checkpoint import CheckpointConfig
from frontier.config.engine import MOVED_TO_ENGINE, EarlyStoppingConfig
from frontier.config.fields import bounds
from frontier.config.monitor import ProfileConfig


@dataclass
class BatchConfig:
    """The batch of one optimizer step: the keys train: and finetune: share (one rule for both,
    frontier.train.batches.batch_size). The global batch is micro_batch_size x grad_accum_steps x ranks."""

    # samples per rank per forward; auto: the largest that fits this machine (frontier.train.batches.batch_size),
    # with grad_accum_steps derived so that the global batch stays global_batch_size
    micro_batch_size: int | Literal["auto"] = field(default=16, metadata=bounds(ge=1))
    grad_accum_steps: int = field(default=1, metadata=bounds(ge=1))
    global_batch_size: int | None = field(default=None, metadata=bounds(ge=1))  # samples per step, all ranks

    def validate(self) -> None:
        if self.micro_batch_size == "auto":
            if self.global_batch_size is None:
                raise ValueError(
                    "global_batch_size: micro_batch_size auto needs the global batch to keep (samples per optimizer "
                    "step over all ranks), e.g. global_batch_size: 64"
                )
            if self.grad_accum_steps != 1:
                raise ValueError(
                    f"grad_accum_steps: {self.grad_accum_steps} is derived when micro_batch_size is auto "
                    "(global_batch_size / (micro x ranks)); leave it at 1"
                )
        elif self.global_batch_size is not None:
            raise ValueError(
                f"global_batch_size: {self.global_batch_size} is read only with micro_batch_size auto; with a number "
                "the global batch is micro_batch_size x grad_accum_steps x ranks (set global_batch_size: null)"
            )


def check_resume(resume: str) -> None:
    if resume not in ("auto", "none") and not resume.strip():
        raise ValueError("resume: expected 'auto', 'none' or a checkpoint directory")


@dataclass
class TrainConfig(BatchConfig):
    """The train stage's run budget (the batch keys come first, from BatchConfig)."""

    MOVED: ClassVar[dict[str, str]] = MOVED_TO_ENGINE  # old keys -> where they went (frontier.config.load)

    max_steps: int = field(default=700, metadata=bounds(ge=1))
    max_minutes: float = field(default=0.0, metadata=bounds(ge=0))  # 0: no wall-clock limit
    seq_len: int | None = field(default=None, metadata=bounds(ge=1))  # None: model.max_seq_len
    document_aware: bool = False  # pack documents: positions restart per document, nothing attends across one
    log_every: int = field(default=50, metadata=bounds(ge=1))
    eval_every: int = field(default=175, metadata=bounds(ge=0))  # 0: off
    eval_batches: int = field(default=4, metadata=bounds(ge=1))  # global batches of fixed val windows
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str = "auto"  # auto | none | a checkpoint directory
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def validate(self) -> None:
        super().validate()
        check_resume(self.resume)
