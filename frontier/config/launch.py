"""The launch: section: how the train and finetune stages start their ranks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds


@dataclass
class LaunchConfig:
    """How the train and finetune stages start their ranks, and what a cluster job asks for.

    One stage = one job = N ranks: with more than one rank per node (or several nodes) the stage
    starts them itself through torch's elastic launcher (frontier.train.launch.launch), so the same
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
