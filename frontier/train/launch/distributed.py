"""Process-group setup for every launcher, and the few collectives the trainer uses.

The same code runs under ``deepspeed --num_gpus N`` / ``--hostfile`` (multi-node), ``torchrun``,
``srun`` (SLURM) and ``mpirun`` (Open MPI), which all start one process per rank and describe it
in the environment; a plain single process needs nothing. NCCL on CUDA, gloo on the CPU; the
device follows DeepSpeed's accelerator (CUDA when present, the CPU with DS_ACCELERATOR=cpu).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from frontier.errors import ConfigError, FrontierError
from frontier.train.launch.signals import EXIT_PEER_LOST

log = logging.getLogger("frontier.train")

# (rank, world size, local rank) variables, in order of preference
_ENV_SCHEMES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # deepspeed launcher, torchrun
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# SLURM_STEP_ID of a job's batch script (SLURM_BATCH_SCRIPT): the script is not one of the job's tasks
_SLURM_BATCH_STEP = "4294967294"


def in_slurm_step(env: Mapping[str, str] | None = None) -> bool:
    """True inside a task that srun started (a job step); false in an sbatch script, where SLURM_NTASKS
    describes the job, not this process."""
    env = os.environ if env is None else env
    return "SLURM_PROCID" in env and env.get("SLURM_STEP_ID", _SLURM_BATCH_STEP) not in (_SLURM_BATCH_STEP, "")


_TASKS_PART = re.compile(r"(\d+)(?:\(x(\d+)\))?")  # "2" or "2(x3)": a count, repeated over that many nodes


def slurm_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed per-node task counts, one entry per node: "2(x3),1" -> [2, 2, 2, 1]; ValueError
    for anything else."""
    counts: list[int] = []
    for part in spec.split(","):
        match = _TASKS_PART.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"not a per-node task count: {part!r}")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def ranks_on_this_node(world_size: int, env: Mapping[str, str] | None = None) -> int:
    """How many ranks share this machine: torchrun's LOCAL_WORLD_SIZE, DeepSpeed's launcher's LOCAL_SIZE, Open
    MPI's local size, or srun's per-node task counts at this node's index; `world_size` (every rank here)
    when none says. ConfigError naming the variable when its value is not a count."""
    env = os.environ if env is None else env
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        if key in env:
            return _count(key, env[key])
    if in_slurm_step(env) and "SLURM_STEP_TASKS_PER_NODE" in env:
        spec = env["SLURM_STEP_TASKS_PER_NODE"]
        try:
            per_node = slurm_tasks_per_node(spec)
        except ValueError:
            raise ConfigError(
                f"environment: SLURM_STEP_TASKS_PER_NODE={spec!r} is not SLURM's per-node task list (e.g. 2(x3),1)"
            ) from None
        node = _count("SLURM_NODEID", env.get("SLURM_NODEID", "0"), least=0)
        if node < len(per_node):
            return per_node[node]
    return world_size


def _count(key: str, value: str, least: int = 1) -> int:
    """The integer environment variable `key` = `value`; ConfigError naming it unless an integer >= `least`."""
    try:
        count: int | None = int(value)
    except ValueError:
        count = None
    if count is None or count < least:
        raise ConfigError(f"environment: {key}={value!r} is not an integer >= {least}")
    return count


def _read_env() -> tuple[int, int, int]:
    for rank_key, size_key, local_key in _ENV_SCHEMES:
        if rank_key == "SLURM_PROCID" and not in_slurm_step():
            continue
        if rank_key == "RANK" and "MASTER_ADDR" not in os.environ:
            # torchrun and the deepspeed launcher always set MASTER_ADDR; RANK / WORLD_SIZE alone are what a
            # single process leaves for DeepSpeed (init_distributed below) and its children inherit
            continue
        if rank_key in os.environ and size_key in os.environ:
            try:
                rank, size = int(os.environ[rank_key]), int(os.environ[size_key])
                local = int(os.environ.get(local_key, rank))
            except ValueError:
                raise ConfigError(
                    f"environment: {rank_key}={os.environ[rank_key]!r} / {size_key}={os.environ[size_key]!r} "
                    "are not integers"
                ) from None
            if not 0 <= rank < size:
                raise ConfigError(f"environment: {rank_key}={rank} is outside [0, {size_key}={size})")
            return rank, size, local
    return 0, 1, 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03" (what `scontrol show hostnames` prints first)."""
    head = nodelist.strip()
    depth = 0
    for i, ch in enumerate(head):  # the first top-level comma ends the first entry
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            head = head[:i]
            break
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    first = ranges.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


def _job_port(job_id: str) -> int:
    """A port every task of one job derives alike (no coordination), in 20000-59999."""
    return 20000 + (int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())) % 40000


def rendezvous_from_scheduler(env: dict[str, str] | None = None) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT that SLURM (srun) or Open MPI (mpirun) imply but do not set.

    SLURM: the first host of SLURM_JOB_NODELIST, a port from SLURM_JOB_ID. Open MPI on one node:
    127.0.0.1, a port from its job id. What the environment sets already always wins.
    """
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    if "SLURM_PROCID" in env and "SLURM_JOB_NODELIST" in env:
        out = {"MASTER_ADDR": first_host(env["SLURM_JOB_NODELIST"]),
               "MASTER_PORT": str(_job_port(env.get("SLURM_JOB_ID", "0")))}  # fmt: skip
    elif "OMPI_COMM_WORLD_RANK" in env:
        if env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == env.get("OMPI_COMM_WORLD_SIZE"):
            job = env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE") or "0"
            out = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_job_port(job))}
    return {k: v for k, v in out.items() if k not in env}


def _disable_cpu_shm_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (~40 s) used only for inference
    all-reduce; training collectives go through torch.distributed. Skip the build on the CPU."""
    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def init_distributed() -> DistInfo:
    """Join (or create) the process group from the launcher's environment; idempotent.

    Multi-process runs need MASTER_ADDR / MASTER_PORT (every launcher above sets them). A single
    process uses an in-memory store, so no port is opened.
    """
    rank, world, local = _read_env()
    from deepspeed.accelerator import get_accelerator

    # follow DeepSpeed's accelerator (DS_ACCELERATOR=cpu trains on the CPU even where CUDA exists)
    cuda = get_accelerator().device_name() == "cuda" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", local % max(torch.cuda.device_count(), 1)) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if world > 1:
            os.environ.update(rendezvous_from_scheduler())
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise ConfigError(
                    f"environment: {', '.join(missing)} not set for a {world}-rank run: use a launcher (torchrun, "
                    "deepspeed, srun), or export them (mpirun -x MASTER_ADDR=<first host> -x MASTER_PORT=<port>)"
                )
            dist.init_process_group(backend, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    # DeepSpeed reads these even for one process; launchers set them, a plain run does not.
    for key, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local)):
        os.environ.setdefault(key, str(value))
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (so the patch below finds the module)

    if not cuda:
        _disable_cpu_shm_build()
    deepspeed.init_distributed(dist_backend=backend)  # wraps the existing group
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, backend=backend)


class PeerLost(FrontierError):
    """A collective failed because another rank is gone (it failed, was killed, or its node went away)."""

    exit_code = EXIT_PEER_LOST  # a launcher blames the rank that failed first, not this one


# how gloo and NCCL word a broken connection to a peer (a RuntimeError or its DistBackendError subclass)
# (only a lost connection: this rank's own NCCL or CUDA failure must keep its message)
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted",
              "remote process exited")  # fmt: skip


@contextmanager
def peer_errors(info: DistInfo, what: str = "a collective") -> Iterator[None]:
    """Turn a collective's failure because another rank is gone into one line (PeerLost)."""
    try:
        yield
    except RuntimeError as exc:
        if info.world_size == 1 or not any(marker in str(exc) for marker in _PEER_GONE):
            raise
        log.debug("%s failed on rank %d", what, info.rank, exc_info=True)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise PeerLost(
            f"rank {info.rank}: {what} failed: another rank stopped or became unreachable ({first}); "
            "the rank that failed first says why"
        ) from None


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of `values` over ranks (float64, one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    if info.world_size > 1:
        with peer_errors(info, "all-reduce"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        with peer_errors(info, "barrier"):
            dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's `obj` on every rank."""
    if info.world_size == 1:
        return obj
    box = [obj]
    with peer_errors(info, "broadcast"):
        dist.broadcast_object_list(box, src=0)
    return box[0]
