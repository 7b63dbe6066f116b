"""Process-group setup for every launcher, and the few collectives the trainer uses.

The same code runs under ``deepspeed --num_gpus N`` / ``--hostfile`` (multi-node), ``torchrun``,
``srun`` (SLURM) and ``mpirun`` (Open MPI), which all start one process per rank and describe it
in the environment (frontier.train.launch.environment reads it); a plain single process needs
nothing. NCCL on CUDA, gloo on the CPU; the device follows DeepSpeed's accelerator (CUDA when
present, the CPU with DS_ACCELERATOR=cpu).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from frontier.errors import ConfigError, FrontierError
from frontier.train.launch.environment import export_rank, export_rendezvous, read_launcher_env
from frontier.train.launch.signals import EXIT_PEER_LOST

log = logging.getLogger("frontier.train")


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


def _read_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process (tests/workflow/test_slurm.py asks it inside a real job)."""
    env = read_launcher_env()
    return env.rank, env.world_size, env.local_rank


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
    launcher_env = read_launcher_env()
    rank, world, local = launcher_env.rank, launcher_env.world_size, launcher_env.local_rank
    from deepspeed.accelerator import get_accelerator

    # follow DeepSpeed's accelerator (DS_ACCELERATOR=cpu trains on the CPU even where CUDA exists)
    cuda = get_accelerator().device_name() == "cuda" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", local % max(torch.cuda.device_count(), 1)) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if world > 1:
            missing = export_rendezvous()
            if missing:
                raise ConfigError(
                    f"environment: {', '.join(missing)} not set for a {world}-rank run: use a launcher (torchrun, "
                    "deepspeed, srun), or export them (mpirun -x MASTER_ADDR=<first host> -x MASTER_PORT=<port>)"
                )
            dist.init_process_group(backend, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    export_rank(launcher_env)  # DeepSpeed reads RANK / WORLD_SIZE / LOCAL_RANK even for one process
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


def leave_process_group() -> None:
    """After a stage that ended well: wait for every rank, then tear the process group down, on each rank.

    Left to the interpreter's exit, a rank's gloo threads and its connection to rank 0's store are torn down
    in whatever order the process dies in; a rank ending after rank 0 is gone then aborted now and then
    ("terminate called without an active exception", exit -6) although its work was done. A peer that is
    already gone makes the barrier fail at once (its sockets are closed): nothing is left to wait for then.
    """
    # One rank has no peer to fall out of step with; and its group (an in-memory store) may serve more stages in
    # this process (a test, a notebook calling frontier.cli.main): leave it standing.
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    try:
        dist.barrier()
    except RuntimeError as exc:
        log.debug("the closing barrier failed (%s); tearing down anyway", exc)
    dist.destroy_process_group()
