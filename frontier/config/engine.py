"""Schemas of the engine: section, of the learning-rate schedule and of the step's stability rules.

``engine:`` is how a training step runs and is watched, one section shared by the train and finetune
stages (each of which keeps its own run budget: ``train:``, ``finetune:``). Where each setting lives:

- precision, zero_stage, offload_optimizer, offload_params, grad_clip, activation_checkpointing,
  compile, deepspeed_config: engine. They say how the DeepSpeed engine computes a step, not how many
  steps there are or on which batch; finetune ran with train's until these were split out.
- nan_guard: engine. A rule about one step (a non-finite loss skips its update; a streak rolls back),
  the same whatever the run's length; finetune ran with train's.
- alerts: engine. Thresholds on the loss, gradient norm, throughput and the GPUs: about the step and
  the machine, not the budget; finetune ran with train's.
- monitor: engine. Where the figures go (progress bar, TensorBoard, trackers, system sampling, the
  peak TFLOP/s for MFU); finetune ran with train's.
- profile: budget (``train.profile``). Its window is a range of the stage's own step numbers; finetune
  always ran with it off.
- early_stopping: budget (``train.early_stopping``). It counts evaluations, whose cadence is the
  stage's; finetune always ran with it off.
- checkpoint: budget (``train.checkpoint``, ``finetune.checkpoint_every``): when a run saves is part of
  its budget.

``kernels:`` (which implementation each fused op uses) is its own section, shared too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds
from frontier.config.monitor import AlertsConfig, MonitorConfig


@dataclass
class ScheduleConfig:
    """Learning rate per optimizer step (see frontier.train.engine.schedule for the exact formulas).

    The peak is optimizer.lr; warmup rises linearly over `warmup_steps`; the floor is
    ``min_lr_ratio * optimizer.lr``, reached at train.max_steps. A fine-tune takes the same shape with
    its own peak, warmup and length (finetune.lr, finetune.warmup_steps, finetune.max_steps).
    """

    kind: Literal["constant", "linear", "cosine", "wsd", "polynomial"] = "cosine"
    warmup_steps: int = field(default=30, metadata=bounds(ge=0))
    min_lr_ratio: float = field(default=0.1, metadata=bounds(ge=0, le=1))
    decay_fraction: float = field(default=0.2, metadata=bounds(gt=0, le=1))  # wsd: final fraction that decays
    power: float = field(default=1.0, metadata=bounds(gt=0))  # polynomial


@dataclass
class NanGuardConfig:
    """A non-finite loss skips the optimizer step; `max_consecutive` in a row roll back to the newest
    checkpoint with the learning rate multiplied by `lr_factor`, at most `max_rollbacks` times."""

    max_consecutive: int = field(default=3, metadata=bounds(ge=1))
    max_rollbacks: int = field(default=2, metadata=bounds(ge=0))
    lr_factor: float = field(default=0.5, metadata=bounds(gt=0, le=1))


@dataclass
class EarlyStoppingConfig:
    """Stop when the val loss has not improved by more than `min_delta` for `patience` evaluations."""

    patience: int = field(default=0, metadata=bounds(ge=0))  # 0: off
    min_delta: float = field(default=0.0, metadata=bounds(ge=0))


@dataclass
class EngineConfig:
    """How both training stages run a step (the DeepSpeed engine) and watch it; see the module docstring."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = field(default=0, metadata=bounds(ge=0, le=3))
    offload_optimizer: bool = False
    offload_params: bool = False
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))  # 0: no clipping
    # recompute each decoder layer's activations in backward instead of storing them: less memory, ~1/3 more
    # compute, the same gradients (frontier.model.checkpointing)
    activation_checkpointing: bool = False
    # torch.compile (Inductor) of model + loss in place (frontier.model.compile): same values and names
    compile: bool = False
    deepspeed_config: str | None = None  # a user DeepSpeed JSON that may override generated values
    nan_guard: NanGuardConfig = field(default_factory=NanGuardConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def validate(self) -> None:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params: parameter offload needs zero_stage 3, got {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer: optimizer offload needs zero_stage 1, 2 or 3, got 0")


# The keys of engine: were train:'s before it existed (finetune took them from there): a train: or finetune:
# section naming one is told where it is now (frontier.config.load reads a section's MOVED).
MOVED_TO_ENGINE = {name: f"engine.{name}" for name in EngineConfig.__dataclass_fields__}
