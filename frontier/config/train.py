"""Schema of the train: section (the loop's budget and engine settings); each room owns its own sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.checkpoint import CheckpointConfig
from frontier.config.engine import EarlyStoppingConfig, NanGuardConfig
from frontier.config.fields import bounds
from frontier.config.monitor import AlertsConfig, MonitorConfig, ProfileConfig


@dataclass
class TrainConfig:
    # samples per rank per forward; auto: the largest that fits this machine (frontier.train.batches.batch_size),
    # with grad_accum_steps derived so that the global batch stays global_batch_size
    micro_batch_size: int | Literal["auto"] = field(default=16, metadata=bounds(ge=1))
    grad_accum_steps: int = field(default=1, metadata=bounds(ge=1))
    global_batch_size: int | None = field(default=None, metadata=bounds(ge=1))  # samples per step, all ranks
    max_steps: int = field(default=700, metadata=bounds(ge=1))
    max_minutes: float = field(default=0.0, metadata=bounds(ge=0))  # 0: no wall-clock limit
    seq_len: int | None = field(default=None, metadata=bounds(ge=1))  # None: model.max_seq_len
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = field(default=0, metadata=bounds(ge=0, le=3))
    offload_optimizer: bool = False
    offload_params: bool = False
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))
    # recompute each decoder layer's activations in backward instead of storing them: less memory, ~1/3 more
    # compute, the same gradients (frontier.model.checkpointing)
    activation_checkpointing: bool = False
    # torch.compile (Inductor) of model + loss in place (frontier.model.compile): same values and names
    compile: bool = False
    deepspeed_config: str | None = None  # a user DeepSpeed JSON that may override generated values
    document_aware: bool = False  # pack documents: positions restart per document, nothing attends across one
    log_every: int = field(default=50, metadata=bounds(ge=1))
    eval_every: int = field(default=175, metadata=bounds(ge=0))  # 0: off
    eval_batches: int = field(default=4, metadata=bounds(ge=1))  # global batches of fixed val windows
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str = "auto"  # auto | none | a checkpoint directory
    nan_guard: NanGuardConfig = field(default_factory=NanGuardConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

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
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params: parameter offload needs zero_stage 3, got {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer: optimizer offload needs zero_stage 1, 2 or 3, got 0")
        if self.resume not in ("auto", "none") and not self.resume.strip():
            raise ValueError("resume: expected 'auto', 'none' or a checkpoint directory")
