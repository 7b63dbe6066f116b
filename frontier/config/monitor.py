"""Schemas of monitoring: alert thresholds (engine.alerts), progress/trackers (engine.monitor), the profiler
window (train.profile: a range of the train stage's own steps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds, check_relative_path


@dataclass
class AlertsConfig:
    """Thresholds of the alert rules (frontier.train.monitor.alerts); 0 switches a rule off."""

    loss_spike_factor: float = field(default=3.0, metadata=bounds(ge=0))  # loss > factor x its EMA
    grad_norm_max: float = field(default=0.0, metadata=bounds(ge=0))
    gpu_memory_pct: float = field(default=95.0, metadata=bounds(ge=0, le=100))
    gpu_temperature_c: float = field(default=85.0, metadata=bounds(ge=0))
    throughput_drop: float = field(default=0.5, metadata=bounds(ge=0, lt=1))  # tokens/s < drop x its EMA
    ema_beta: float = field(default=0.9, metadata=bounds(gt=0, lt=1))
    warmup_steps: int = field(default=20, metadata=bounds(ge=0))  # EMA rules stay quiet while it settles


@dataclass
class MonitorConfig:
    progress_bar: bool = True  # loss, tokens/s and ETA on a terminal (log lines only when stderr is a file)
    tensorboard: bool = True
    system_every_s: float = field(default=10.0, metadata=bounds(ge=0))  # CPU/RAM/disk/GPU sampling; 0: off
    peak_tflops: float | None = field(default=None, metadata=bounds(gt=0))  # per device; None: known table
    # experiment trackers beside TensorBoard (frontier.train.monitor.trackers); all work offline
    trackers: list[Literal["dvclive", "mlflow", "wandb"]] = field(default_factory=list)
    project: str = "frontier"  # MLflow experiment / W&B project
    dvclive_dir: str = "dvclive"  # DVCLive's directory (its dvc.yaml there is what DVC reads)
    mlflow_tracking_uri: str | None = None  # None: a file store in the run's logs (checkpoints/.../logs/mlruns)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"

    def validate(self) -> None:
        check_relative_path("dvclive_dir", self.dvclive_dir)


@dataclass
class ProfileConfig:
    """A torch.profiler trace of steps [start_step, start_step + num_steps) (chrome trace per rank)."""

    start_step: int = field(default=0, metadata=bounds(ge=0))
    num_steps: int = field(default=0, metadata=bounds(ge=0))  # 0: off
