"""Which launcher started this process, and which rank it is: the one reader of the launcher's environment.

torchrun, DeepSpeed's launcher, srun (the tasks of a SLURM job step) and mpirun (Open MPI) each describe
the rank they start in variables of their own; a plain process has none. Every reader goes through
`read_launcher_env` (the process group, `frontier train` deciding whether to start ranks itself, the CPU
micro-batch budget, and the Snakefile at parse time: this module imports neither torch nor DeepSpeed).

The rules, one set for all of them:

- SCHEMES are tried in order; the first whose rank and world-size variables (and `requires`) are all set is
  the launcher. An inner launcher comes first (torchrun inside an srun step is torchrun's rank).
- torch's RANK / WORLD_SIZE count only with MASTER_ADDR: a one-process run exports RANK / WORLD_SIZE for
  DeepSpeed (`export_rank`), and its children inherit them without a MASTER_ADDR.
- srun's variables count only inside a job step. A batch script (sbatch) or salloc's interactive step also
  has SLURM_PROCID and SLURM_NTASKS, but they describe the job: that shell is one process, not a rank.
- Only the chosen launcher's variables (and MASTER_ADDR / MASTER_PORT wherever set) are read, strictly: ASCII
  digits only (no sign, blank, "1x" or a Unicode digit such as "٣", which int() and str.isdigit() take),
  within range (rank < world size, local rank < ranks on the node <= world size). Anything else is a
  ConfigError naming the variable, its value and what was expected.
- No launcher: rank 0 of 1.

A new launcher (Intel MPI's PMI_RANK / PMI_SIZE, say) is one Scheme in SCHEMES, plus a branch in
`rendezvous_from_scheduler` when it implies MASTER_ADDR / MASTER_PORT without setting them.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Literal

from frontier.errors import ConfigError

Launcher = Literal["torchrun", "deepspeed", "env", "mpirun", "srun"]

# SLURM_STEP_ID of a job's shells, which are no step's tasks: the batch script (0xfffffffe before Slurm 20.11,
# 0xfffffffb since) and salloc's interactive step (0xfffffffa, which keeps the job's SLURM_NTASKS); "": none.
SLURM_SHELL_STEPS = frozenset({"", "4294967294", "4294967291", "4294967290"})


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
    """A task srun started (a job step), not a job's shell."""
    return "SLURM_PROCID" in environ and environ.get("SLURM_STEP_ID", "") not in SLURM_SHELL_STEPS


@dataclass(frozen=True)
class Scheme:
    """The variables one launcher sets in each process it starts."""

    launcher: Launcher
    rank: str
    world_size: str
    local_rank: str  # unset: the rank (as if every rank were on this node)
    local_world_size: str | None  # the ranks on this node
    node_rank: str | None  # this node's index
    requires: tuple[str, ...] = ()  # also set by this launcher: what tells it apart
    applies: Callable[[Mapping[str, str]], bool] | None = None  # a further condition on the environment
    per_node_list: bool = False  # local_world_size is SLURM's per-node task list, read at node_rank's index


SCHEMES = (
    Scheme("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
           requires=("MASTER_ADDR", "TORCHELASTIC_RUN_ID")),
    Scheme("deepspeed", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK",
           requires=("MASTER_ADDR", "CROSS_RANK")),
    # torch's env:// variables from anything else (an older DeepSpeed, a script of one's own)
    Scheme("env", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", None, requires=("MASTER_ADDR",)),
    # OMPI_COMM_WORLD_NODE_RANK is a rank among this node's processes, not the node's index
    Scheme("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
           "OMPI_COMM_WORLD_LOCAL_SIZE", None),
    Scheme("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NODEID",
           applies=_in_slurm_step, per_node_list=True),
)  # fmt: skip

# What SLURM (srun) and Open MPI (mpirun) imply about the rendezvous without setting MASTER_ADDR / MASTER_PORT
_RENDEZVOUS = ("SLURM_JOB_NODELIST", "OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE")
# Every variable this module reads (what a test clears for an environment of its own)
VARIABLES = tuple(
    dict.fromkeys(
        name
        for s in SCHEMES
        for name in (s.rank, s.world_size, s.local_rank, s.local_world_size, s.node_rank, *s.requires)
        if name is not None
    )
) + ("MASTER_PORT", "SLURM_STEP_ID", "SLURM_JOB_ID", *_RENDEZVOUS)


@dataclass(frozen=True)
class LauncherEnv:
    """This process as its launcher describes it (read_launcher_env)."""

    launcher: Launcher | None  # None: a plain process, rank 0 of 1
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None  # the ranks on this node, where the launcher says
    node_rank: int | None  # this node's index, where the launcher says
    master_addr: str | None  # as set (srun and mpirun imply them instead: rendezvous_from_scheduler)
    master_port: int | None
    slurm_job_id: str | None  # inside a SLURM job: its batch script, a step's task, an salloc shell
    in_slurm_step: bool  # a task srun started (whichever launcher runs inside it)

    @property
    def in_slurm_job(self) -> bool:
        return self.slurm_job_id is not None

    @property
    def started_as_rank(self) -> bool:
        """Started by an outer launcher as one of its ranks: always by torchrun, DeepSpeed's launcher or mpirun
        (even as one of one), by srun as one of several. A one-task step (how Snakemake's SLURM executor runs a job) is the job's one
        process, which may start its node's ranks itself."""
        return self.launcher is not None and (self.launcher != "srun" or self.world_size > 1)


_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() also takes " 3", "+3", "3_0" and "٣"
# who sets a scheme's variables, for messages
_BY = {"torchrun": "torchrun", "deepspeed": "DeepSpeed's launcher", "env": "a launcher (torch's env:// variables)",
       "mpirun": "Open MPI's mpirun", "srun": "srun"}  # fmt: skip


def _shown(environ: Mapping[str, str], key: str) -> str:
    """KEY='value' for a message (a long value cut short)."""
    value = environ[key]
    return f"{key}={value if len(value) <= 40 else value[:37] + '...'!r}"


def _integer(environ: Mapping[str, str], key: str, least: int, what: str, most: int | None = None) -> int:
    """The variable `key` as an integer in [least, most]; ConfigError naming it otherwise."""
    value = environ[key]
    try:
        number = int(value) if _DIGITS.fullmatch(value) else None
    except ValueError:  # more digits than int() converts
        number = None
    if number is None or number < least or (most is not None and number > most):
        bound = f"an integer >= {least}" if most is None else f"an integer in [{least}, {most}]"
        raise ConfigError(f"environment: {_shown(environ, key)} is not {bound} (expected {what})")
    return number


def _below(environ: Mapping[str, str], key: str, value: int, bound_key: str, bound: int, what: str) -> None:
    """ConfigError naming `key` unless `value` (its number) is below `bound` (the number `bound_key` gives)."""
    if value >= bound:
        raise ConfigError(f"environment: {_shown(environ, key)} is outside [0, {bound_key}={bound}) (expected {what})")


_TASKS_PART = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?")  # "2" or "2(x3)": a count, repeated over that many nodes


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


def _local_world_size(environ: Mapping[str, str], scheme: Scheme, node: int | None) -> int | None:
    key = scheme.local_world_size
    if key is None or key not in environ:
        return None
    if not scheme.per_node_list:
        return _integer(environ, key, 1, f"the number of ranks on this node, as {_BY[scheme.launcher]} sets it")
    try:
        per_node = slurm_tasks_per_node(environ[key])
    except ValueError:
        raise ConfigError(
            f"environment: {_shown(environ, key)} is not SLURM's per-node task list (e.g. 2(x3),1)"
        ) from None
    index = node or 0
    return per_node[index] if index < len(per_node) else None  # a node outside the list: nothing said


def _detect(environ: Mapping[str, str]) -> Scheme | None:
    for scheme in SCHEMES:
        needed = (scheme.rank, scheme.world_size, *scheme.requires)
        if all(k in environ for k in needed) and (scheme.applies is None or scheme.applies(environ)):
            return scheme
    return None


def read_launcher_env(environ: Mapping[str, str] = os.environ) -> LauncherEnv:
    """This process's launcher and rank, by the rules above; ConfigError for a malformed variable."""
    master_addr = environ.get("MASTER_ADDR")
    if master_addr is not None and not master_addr.strip():
        raise ConfigError(f"environment: MASTER_ADDR={master_addr!r} is empty (expected the address of rank 0's host)")
    master_port = None
    if "MASTER_PORT" in environ:
        master_port = _integer(environ, "MASTER_PORT", 1, "the TCP port of rank 0's rendezvous", most=65535)
    scheme = _detect(environ)
    rank, world, local, local_world, node = _rank(environ, scheme) if scheme else (0, 1, 0, None, None)
    return LauncherEnv(
        launcher=scheme.launcher if scheme else None,
        rank=rank,
        world_size=world,
        local_rank=local,
        local_world_size=local_world,
        node_rank=node,
        master_addr=master_addr,
        master_port=master_port,
        slurm_job_id=environ.get("SLURM_JOB_ID"),
        in_slurm_step=_in_slurm_step(environ),
    )


def _rank(environ: Mapping[str, str], scheme: Scheme) -> tuple[int, int, int, int | None, int | None]:
    """(rank, world size, local rank, ranks on this node, node index) from `scheme`'s variables."""
    by = _BY[scheme.launcher]
    world = _integer(environ, scheme.world_size, 1, f"the number of ranks, as {by} sets it")
    rank = _integer(environ, scheme.rank, 0, f"this process's rank, as {by} sets it")
    _below(environ, scheme.rank, rank, scheme.world_size, world, f"this process's rank, as {by} sets it")
    node = None
    if scheme.node_rank is not None and scheme.node_rank in environ:
        node = _integer(environ, scheme.node_rank, 0, f"this node's index, as {by} sets it")
    local_world = _local_world_size(environ, scheme, node)
    if local_world is not None and local_world > world:
        key = str(scheme.local_world_size)
        raise ConfigError(
            f"environment: {_shown(environ, key)} puts {local_world} ranks on this node, more than "
            f"{scheme.world_size}={world} (expected the ranks on this node, as {by} sets it)"
        )
    local = rank  # as if every rank were on this node (each launcher above sets it, though)
    if scheme.local_rank in environ:
        what = f"this process's rank on its node, as {by} sets it"
        local = _integer(environ, scheme.local_rank, 0, what)
        if local_world is None:
            _below(environ, scheme.local_rank, local, scheme.world_size, world, what)
        else:
            _below(environ, scheme.local_rank, local, str(scheme.local_world_size), local_world, what)
    return rank, world, local, local_world, node


def ranks_on_this_node(world_size: int, environ: Mapping[str, str] = os.environ) -> int:
    """How many ranks share this machine: what the launcher says, else `world_size` (every rank here)."""
    local = read_launcher_env(environ).local_world_size
    return world_size if local is None else local


def resolve_nproc_per_node(nproc_per_node: int | str, gpus: Callable[[], int]) -> int:
    """launch.nproc_per_node as a number: "auto" is one rank per GPU of a node, and 1 without any.

    `gpus` counts a node's GPUs, called only for "auto". On the node itself: the CUDA devices this process
    sees (frontier.train.launch.launch, which imports torch for it). On the submitting side (the Snakefile),
    before the job has any: the GPUs the job asks for per node (launch.gpus_per_node).
    """
    if nproc_per_node == "auto":
        return max(1, gpus())
    return int(nproc_per_node)


# -- what the process group needs that a scheduler implies -------------------------------------------


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
    return 20000 + (int(job_id) if _DIGITS.fullmatch(job_id) else zlib.crc32(job_id.encode())) % 40000


def rendezvous_from_scheduler(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT that SLURM or Open MPI imply but do not set; what is set already wins.

    Inside a SLURM job (srun's tasks, and mpirun's ranks in a batch script alike): the first host of
    SLURM_JOB_NODELIST, a port from SLURM_JOB_ID. Open MPI on one node: 127.0.0.1, a port from its job id.
    On several nodes without SLURM there is no safe guess (init_distributed says what to export).
    """
    out: dict[str, str] = {}
    if "SLURM_PROCID" in environ and "SLURM_JOB_NODELIST" in environ:
        out = {"MASTER_ADDR": first_host(environ["SLURM_JOB_NODELIST"]),
               "MASTER_PORT": str(_job_port(environ.get("SLURM_JOB_ID", "0")))}  # fmt: skip
    elif "OMPI_COMM_WORLD_RANK" in environ:
        if environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") == environ.get("OMPI_COMM_WORLD_SIZE"):
            job = environ.get("OMPI_MCA_ess_base_jobid") or environ.get("PMIX_NAMESPACE") or "0"
            out = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_job_port(job))}
    return {k: v for k, v in out.items() if k not in environ}


def export_rendezvous(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set what rendezvous_from_scheduler implies; the names of MASTER_ADDR / MASTER_PORT still unset."""
    environ.update(rendezvous_from_scheduler(environ))
    return [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in environ]


def export_rank(launcher_env: LauncherEnv, environ: MutableMapping[str, str] = os.environ) -> None:
    """Write this rank as torch's variables where unset (a launcher's own stay).

    DeepSpeed reads RANK / WORLD_SIZE / LOCAL_RANK even for one process (and under mpirun would otherwise
    look for MPI). LOCAL_WORLD_SIZE goes with them where known: once export_rendezvous has set MASTER_ADDR,
    a later read in this process finds torch's variables first and must still count the ranks on this node.
    """
    values = {"RANK": launcher_env.rank, "WORLD_SIZE": launcher_env.world_size, "LOCAL_RANK": launcher_env.local_rank}
    if launcher_env.local_world_size is not None:
        values["LOCAL_WORLD_SIZE"] = launcher_env.local_world_size
    for key, value in values.items():
        environ.setdefault(key, str(value))
