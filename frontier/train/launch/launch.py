"""A stage starts its own ranks from params (``launch:``), through torch's elastic launcher.

``frontier train`` / ``frontier finetune`` check here first: when this process is not already
one rank of a launched job and the params ask for more than one rank on this node (or for
several nodes), the stage becomes the job's launcher. It runs ``python -m frontier <same
arguments>`` as ``nproc_per_node`` worker processes under torch.distributed.launcher's
elastic agent (what torchrun runs: static rendezvous on ``master_addr:master_port``, node rank
``node_rank``), and turns the outcome into the stage's exit code:

- every rank succeeded: 0;
- a rank failed: the agent stops the others (fail-fast) and the stage ends with that rank's
  one-line error (each rank writes it to the error file torch's agent reads) and exit code;
- the stage got SIGTERM / SIGINT / SIGUSR1 / SIGHUP: the signal reaches every rank as a stop request
  (SIGTERM, or SIGUSR1 as itself), each checkpoints, and the stage exits 3 so that rerunning the
  same command resumes. A rank that has not finished its checkpoint after
  ``launch.shutdown_timeout_s`` is killed.

An outer launcher (srun, mpirun, deepspeed, torchrun) already describes a rank in the
environment; then nothing is launched here and the stage runs in-process as that rank.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from frontier.config.launch import LaunchConfig
from frontier.errors import ConfigError, FrontierError
from frontier.train.launch.environment import read_launcher_env, resolve_nproc_per_node
from frontier.train.launch.signals import (
    EXIT_INTERRUPTED,
    EXIT_PEER_LOST,
    STOP_SIGNALS,
    StopRequest,
    TrainingInterrupted,
)

log = logging.getLogger("frontier.launch")

RENDEZVOUS_TIMEOUT_S = 900  # how long node 0 waits for the other nodes (and they for it)


class RankFailed(FrontierError):
    """A rank of a launched stage failed; the stage exits with that rank's code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def started_by_launcher(env: Mapping[str, str] | None = None) -> bool:
    """True when an outer launcher started this process as one of its ranks (LauncherEnv.started_as_rank)."""
    return read_launcher_env(os.environ if env is None else env).started_as_rank


def _cuda_devices() -> int:
    if os.environ.get("DS_ACCELERATOR", "") == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ranks_per_node(cfg: LaunchConfig) -> int:
    """launch.nproc_per_node resolved on this node: auto = every visible CUDA device, 1 without CUDA."""
    return resolve_nproc_per_node(cfg.nproc_per_node, gpus=_cuda_devices)


def should_launch(cfg: LaunchConfig, env: Mapping[str, str] | None = None) -> bool:
    """Does this stage process start ranks itself (rather than train in-process)?"""
    if cfg.launcher == "external" or started_by_launcher(env):
        return False
    return cfg.launcher == "torchrun" or cfg.nnodes * ranks_per_node(cfg) > 1


def check_outer_launcher(cfg: LaunchConfig, stage: str, env: Mapping[str, str] | None = None) -> None:
    """Warn when an outer launcher started another number of ranks than launch: asks for (its count wins)."""
    if cfg.nproc_per_node == "auto":
        return
    outer = read_launcher_env(os.environ if env is None else env)
    if not outer.started_as_rank:
        return
    asked, got = cfg.nnodes * int(cfg.nproc_per_node), outer.world_size
    if got != asked:
        log.warning("%s: launch: asks for %d rank(s) (nnodes x nproc_per_node) but the outer launcher started %d; "
                    "training with %d (global batch = micro x accumulation x %d)", stage, asked, got, got, got)  # fmt: skip


def threads_per_rank(cfg: LaunchConfig, nproc: int) -> int:
    """CPU threads of each rank: launch.threads_per_rank, else this stage's cores shared among its ranks.

    The stage's cores: OMP_NUM_THREADS when the caller set it (Snakemake sets it to the rule's
    threads), else the CPUs this process may run on.
    """
    if cfg.threads_per_rank:
        return cfg.threads_per_rank
    try:
        cores = int(os.environ["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def die_with_launcher(env: Mapping[str, str] | None = None) -> None:
    """In a rank this stage started: get SIGTERM (a stop request: checkpoint, exit 3) if the stage process
    dies, however it dies (torch starts ranks in sessions of their own, so nothing else would stop them)."""
    pid = (os.environ if env is None else env).get(LAUNCHER_PID)
    if pid and pid.isdigit():
        from frontier.utils.procs import die_with_parent

        die_with_parent(int(pid), signal.SIGTERM)


def report_rank_error(message: str, exit_code: int, env: Mapping[str, str] | None = None) -> None:
    """Leave this rank's one-line error and the exit code it chose where torch's elastic agent reads them
    (a no-op outside a launched rank). The code matters: the agent may stop a rank with SIGTERM while it is
    still exiting, and only this file then says whether it had lost a peer or saved its stop checkpoint."""
    path = (os.environ if env is None else env).get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"message": message, "timestamp": int(time.time()), "exit_code": exit_code}, f)
    except OSError:
        pass  # the exit code still reaches the launcher


# What the stage forwards to its ranks as a stop request (SIGHUP among them: a closed SSH session).
_FORWARDED = STOP_SIGNALS
LAUNCHER_PID = "FRONTIER_LAUNCHER_PID"  # set for the ranks: the stage process they must not outlive


class StoppedBeforeRanks(TrainingInterrupted):
    """A stop signal arrived before any rank was running: nothing to checkpoint."""


class _ForwardStops(StopRequest):
    """While the ranks run: a stop signal to the stage becomes a stop request to every rank.

    torch starts each rank in a session of its own, so a terminal's Ctrl-C reaches the stage only:
    the first stop signal is forwarded as SIGTERM (SIGUSR1 as itself), a second SIGINT as SIGINT,
    which tells the ranks not to wait for their checkpoint. Ranks still alive `timeout_s` after the
    first signal are killed. A signal that comes before any rank exists ends the launch at once.
    """

    signals = _FORWARDED

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self._timer: threading.Timer | None = None

    def _ranks(self) -> list[Any]:
        import psutil

        return psutil.Process().children()

    def _send(self, sig: int) -> int:
        ranks = self._ranks()
        for proc in ranks:
            try:
                proc.send_signal(sig)
            except Exception:  # noqa: BLE001  (gone already: nothing to stop)
                pass
        return len(ranks)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = signum
        if not first and signum == signal.SIGINT:
            self._send(signal.SIGINT)  # a second Ctrl-C: stop now, without the checkpoint
            return
        reached = self._send(signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)
        if not reached:  # still in the rendezvous: the agent cleans up what it started as this unwinds
            raise StoppedBeforeRanks(f"stopped by {self.name} before the ranks started; nothing to checkpoint")
        if first:
            self._timer = threading.Timer(self.timeout_s, self._send, args=(signal.SIGKILL,))
            self._timer.daemon = True
            self._timer.start()

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().__exit__(*exc)


def _quiet_agent() -> None:
    """torch's agent logs each start (a page) and each failure (a table) itself; the stage says it in one line."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.launcher"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch_ranks(cfg: LaunchConfig, argv: Sequence[str], stage: str) -> None:
    """Run ``python -m frontier <argv>`` as this node's ranks; return when all succeeded, else raise.

    Raises TrainingInterrupted (exit 3) after a stop signal, RankFailed with the first failed
    rank's message and exit code otherwise.
    """
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig as ElasticConfig
    from torch.distributed.launcher.api import elastic_launch

    nproc = ranks_per_node(cfg)
    if cfg.nnodes > 1 and cfg.master_port is None:
        raise ConfigError(
            f"launch.master_port: {cfg.nnodes} nodes must agree on a port; set it (and launch.master_addr to node "
            "0's address), or let srun start the ranks (snakemake --executor slurm)"
        )
    port = cfg.master_port or _free_port(cfg.master_addr)
    world = cfg.nnodes * nproc
    threads = threads_per_rank(cfg, nproc)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # what each rank's torch uses (the workers inherit it)
    os.environ[LAUNCHER_PID] = str(os.getpid())  # each rank ends itself if this process dies (die_with_launcher)
    _quiet_agent()
    log.info("%s: starting %d rank(s) on this node (node %d of %d, world size %d, %d thread(s) each) via %s:%d",
             stage, nproc, cfg.node_rank, cfg.nnodes, world, threads, cfg.master_addr, port)  # fmt: skip
    config = ElasticConfig(
        min_nodes=cfg.nnodes,
        max_nodes=cfg.nnodes,
        nproc_per_node=nproc,
        run_id=f"frontier-{stage}",
        rdzv_backend="static",  # fixed membership: node_rank and the master's address, as torchrun --node-rank
        rdzv_endpoint=f"{cfg.master_addr}:{port}",
        rdzv_configs={"rank": cfg.node_rank, "timeout": RENDEZVOUS_TIMEOUT_S},
        max_restarts=0,  # a failed rank ends the stage; rerunning it resumes from the newest checkpoint
        monitor_interval=0.2,
        start_method="spawn",
        signals_to_handle="SIGQUIT",  # SIGTERM, SIGINT, SIGUSR1 and SIGHUP are ours (_ForwardStops)
        shutdown_timeout=int(cfg.shutdown_timeout_s),
        local_addr=cfg.master_addr if cfg.nnodes == 1 else None,
    )
    with _ForwardStops(cfg.shutdown_timeout_s) as stops:
        try:
            elastic_launch(config, sys.executable)("-m", "frontier", *argv)
        except ChildFailedError as exc:
            _raise_for(exc, stops.signum, stage)
        except (RendezvousError, DistError) as exc:  # the nodes never met: a wrong address or port, a node missing
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
            raise RankFailed(
                f"{stage}: node {cfg.node_rank} of {cfg.nnodes} could not meet the others at {cfg.master_addr}:{port} "
                f"within {RENDEZVOUS_TIMEOUT_S} s ({exc.__class__.__name__}: {first}); check launch.master_addr, "
                "launch.master_port and that every node runs the same command",
                exit_code=1,
            ) from None
    if stops.signum is not None:  # every rank finished before the stop could take effect
        log.info("%s: %s arrived as the ranks finished; nothing to resume", stage, signal.Signals(stops.signum).name)


def _raise_for(exc: Any, signum: int | None, stage: str) -> None:
    failures: dict[int, Any] = exc.failures
    codes = {rank: _exit_code(f) for rank, f in failures.items()}
    log.debug("%s: rank exit codes %s", stage, codes)
    if signum is not None and all(c == EXIT_INTERRUPTED or c < 0 for c in codes.values()):
        # The stop checkpoint is collective: one rank's exit 3 means every rank's part of it is saved
        # (a rank still exiting when the agent saw that is the one with a signal's code).
        saved = [f for f in failures.values() if _exit_code(f) == EXIT_INTERRUPTED]
        name = signal.Signals(signum).name
        if saved:
            raise TrainingInterrupted(_error_file_message(saved[0]) or f"{stage}: stopped by {name} at a checkpoint; "
                                      "run the same command again to resume")  # fmt: skip
        raise TrainingInterrupted(
            f"{stage}: stopped by {name} before a checkpoint could be saved; rerunning resumes from the newest one"
        )
    # A rank that lost its peer (EXIT_PEER_LOST) is a consequence: blame one that failed for its own reason.
    causes = {r: f for r, f in failures.items() if codes[r] != EXIT_PEER_LOST} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    failure, code = causes[rank], codes[rank]
    message = _error_file_message(failure)
    what = f"died of {failure.signal_name()}" if code < 0 else f"failed with exit code {code}"
    if message:
        detail = f": {message}"
    elif code < 0:
        detail = " (killed from outside the run: out of memory, a scheduler or a user)"
    else:
        detail = " (its output above says why)"
    raise RankFailed(
        f"rank {rank} of {stage} {what}{detail}; the other ranks were stopped. Rerunning resumes from the newest "
        "checkpoint",
        exit_code=code if code > 0 else 1,
    )


def _exit_code(failure: Any) -> int:
    """The exit code a rank chose (its error file), else the one its process ended with (negative: a signal)."""
    recorded = failure.error_file_data.get("exit_code") if _error_file_message(failure) is not None else None
    return recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else failure.exitcode


def _error_file_message(failure: Any) -> str | None:
    """The one line a rank left in its error file (None without one: torch then only names a signal)."""
    if failure.error_file in ("", "<N/A>") or not os.path.isfile(failure.error_file):
        return None
    return _one_line(failure.message) or None


def _one_line(message: Any) -> str:
    text = message if isinstance(message, str) else json.dumps(message)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
