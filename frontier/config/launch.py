"""The launch: section: how the train and finetune stages start their ranks, and what each stage's cluster
job asks its scheduler for (Snakemake resources:, which executor plugins such as SLURM's turn into sbatch options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds

# A SLURM partition name, or several separated by commas (sbatch -p takes a list): no spaces, no quotes.
_PARTITION = re.compile(r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*")


def check_partition(key: str, value: str | None) -> None:
    """None (the cluster's default partition) or a partition name; raises ValueError("key: why")."""
    if value is not None and not _PARTITION.fullmatch(value):
        raise ValueError(f"{key}: {value!r} is not a partition name (letters, digits, '_', '.', '-'; a list "
                         "separated by ','); null for the cluster's default")  # fmt: skip


@dataclass
class ClusterJobConfig:
    """What the cluster job of every stage other than train and finetune asks for: one task on one node.

    The defaults fit a small node (2 CPUs, 4 GB): a job asking for more than any node has is refused or stays
    pending forever, so a cluster of bigger nodes is described here, not the other way round.
    """

    # CPUs of a multithreaded stage's job (tokenize's workers); single-threaded stages ask for 1. Also the CPUs
    # of a train/finetune rank when launch.threads_per_rank is 0 (--cores describes the submitting machine).
    cpus: int = field(default=2, metadata=bounds(ge=1, le=4096))
    mem_mb: int = field(default=4096, metadata=bounds(ge=1))  # their data is streamed or memory-mapped
    runtime_min: int = field(default=60, metadata=bounds(ge=1))
    partition: str | None = None  # None: the cluster's default partition

    def validate(self) -> None:
        check_partition("partition", self.partition)


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
    )  # CPU threads per rank; 0: the cores / ranks (a cluster job: cluster.cpus per rank)
    shutdown_timeout_s: float = field(default=120.0, metadata=bounds(ge=1))  # checkpoint time after a stop signal
    # what the train and finetune cluster jobs ask their scheduler for (nodes: nnodes, one task per rank)
    gpus_per_node: int = field(default=0, metadata=bounds(ge=0))
    mem_mb: int = field(default=4096, metadata=bounds(ge=1))  # per node; the default model trains in far less
    runtime_min: int = field(default=120, metadata=bounds(ge=1))
    partition: str | None = None  # None: the cluster's default partition
    cluster: ClusterJobConfig = field(default_factory=ClusterJobConfig)  # every other stage's job

    def validate(self) -> None:
        check_partition("partition", self.partition)
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank: {self.node_rank} is outside [0, nnodes={self.nnodes})")
        if self.launcher == "external" and (self.nnodes > 1 or self.nproc_per_node not in ("auto", 1)):
            raise ValueError(
                "launcher: 'external' takes the ranks from the outer launcher (srun -n, mpirun -np, deepspeed "
                "--num_gpus); leave nproc_per_node at auto and nnodes at 1"
            )
