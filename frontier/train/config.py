"""Schemas of the training loop and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config_fields import bounds, check_relative_path


@dataclass
class ScheduleConfig:
    """Learning rate per optimizer step (see frontier.train.schedule for the exact formulas).

    The peak is optimizer.lr; warmup rises linearly over `warmup_steps`; the floor is
    ``min_lr_ratio * optimizer.lr``, reached at train.max_steps.
    """

    kind: Literal["constant", "linear", "cosine", "wsd", "polynomial"] = "cosine"
    warmup_steps: int = field(default=30, metadata=bounds(ge=0))
    min_lr_ratio: float = field(default=0.1, metadata=bounds(ge=0, le=1))
    decay_fraction: float = field(default=0.2, metadata=bounds(gt=0, le=1))  # wsd: final fraction that decays
    power: float = field(default=1.0, metadata=bounds(gt=0))  # polynomial


@dataclass
class CheckpointConfig:
    """When checkpoints are written (besides the end of the run and a stop signal) and how many stay."""

    every_steps: int = field(default=0, metadata=bounds(ge=0))  # 0: off
    every_minutes: float = field(default=0.0, metadata=bounds(ge=0))  # 0: off
    keep_last: int = field(default=2, metadata=bounds(ge=1))
    keep_best: bool = True  # also save when the val loss improves, and keep that checkpoint


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
class AlertsConfig:
    """Thresholds of the alert rules (frontier.train.alerts); 0 switches a rule off."""

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
    # experiment trackers beside TensorBoard (frontier.train.trackers); all work offline
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


@dataclass
class TrainConfig:
    # samples per rank per forward; auto: the largest that fits this machine (frontier.train.batch_size),
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


@dataclass
class LaunchConfig:
    """How the train and finetune stages start their ranks, and what a cluster job asks for.

    One stage = one job = N ranks: with more than one rank per node (or several nodes) the stage
    starts them itself through torch's elastic launcher (frontier.train.launch), so the same
    command under Snakemake or DVC uses every GPU of the node. `external` leaves that to an outer
    launcher (srun, mpirun, deepspeed); `auto` does the same whenever one already started this process.
    """

    launcher: Literal["auto", "torchrun", "external"] = "auto"
    nproc_per_node: int | Literal["auto"] = field(
        default="auto", metadata=bounds(ge=1, le=1024)
    )  # auto: CUDA devices, else 1
    nnodes: int = field(default=1, metadata=bounds(ge=1, le=100_000))
    node_rank: int = field(default=0, metadata=bounds(ge=0))  # this node's index (multi-node, started by hand)
    master_addr: str = "127.0.0.1"  # node 0's address (multi-node)
    # None: a free port on one node; several nodes started by hand need one (srun's ranks derive theirs)
    master_port: int | None = field(default=None, metadata=bounds(ge=1, le=65535))
    threads_per_rank: int = field(
        default=0, metadata=bounds(ge=0, le=4096)
    )  # CPU threads per rank; 0: the cores / ranks
    shutdown_timeout_s: float = field(default=120.0, metadata=bounds(ge=1))  # checkpoint time after a stop signal
    # what a cluster job asks its scheduler for (Snakemake resources:, read by executor plugins such as SLURM)
    gpus_per_node: int = field(default=0, metadata=bounds(ge=0))
    mem_mb: int = field(default=8192, metadata=bounds(ge=1))  # per node
    runtime_min: int = field(default=120, metadata=bounds(ge=1))

    def validate(self) -> None:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank: {self.node_rank} is outside [0, nnodes={self.nnodes})")
        if self.launcher == "external" and (self.nnodes > 1 or self.nproc_per_node not in ("auto", 1)):
            raise ValueError(
                "launcher: 'external' takes the ranks from the outer launcher (srun -n, mpirun -np, deepspeed "
                "--num_gpus); leave nproc_per_node at auto and nnodes at 1"
            )
