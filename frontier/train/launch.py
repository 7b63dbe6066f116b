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
- the stage got SIGTERM / SIGINT / SIGUSR1: the signal reaches every rank as a stop request
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

from frontier.errors import FrontierError
from frontier.train.config import LaunchConfig
from frontier.train.distributed import in_slurm_step
from frontier.train.signals import EXIT_INTERRUPTED, STOP_SIGNALS, TrainingInterrupted

log = logging.getLogger("frontier.launch")


class RankFailed(FrontierError):
    """A rank of a launched stage failed; the stage exits with that rank's code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def started_by_launcher(env: Mapping[str, str] | None = None) -> bool:
    """True when an outer launcher started this process as one rank of several (or torchrun as one of one)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, the deepspeed launcher, our own elastic launch
        return True
    if "OMPI_COMM_WORLD_SIZE" in env:  # mpirun
        return True
    return in_slurm_step(env) and env.get("SLURM_NTASKS", "1") != "1"  # srun: one task of a job step


def _cuda_devices() -> int:
    if os.environ.get("DS_ACCELERATOR", "") == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ranks_per_node(cfg: LaunchConfig) -> int:
    """launch.nproc_per_node resolved: auto = every visible CUDA device, 1 without CUDA."""
    if cfg.nproc_per_node == "auto":
        return max(1, _cuda_devices())
    return int(cfg.nproc_per_node)


def should_launch(cfg: LaunchConfig, env: Mapping[str, str] | None = None) -> bool:
    """Does this stage process start ranks itself (rather than train in-process)?"""
    if cfg.launcher == "external" or started_by_launcher(env):
        return False
    return cfg.launcher == "torchrun" or cfg.nnodes * ranks_per_node(cfg) > 1


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


def report_rank_error(message: str, env: Mapping[str, str] | None = None) -> None:
    """Leave this rank's one-line error where torch's elastic agent reads it (a no-op outside a launched rank)."""
    path = (os.environ if env is None else env).get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)
    except OSError:
        pass  # the exit code still reaches the launcher


class _ForwardStops:
    """While the ranks run: a stop signal to the stage becomes a stop request to every rank.

    SIGINT is forwarded as SIGTERM: a terminal's Ctrl-C also reaches the ranks directly, and a
    second SIGINT would tell them not to wait for their checkpoint. Ranks still alive
    `timeout_s` after the first signal are killed.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def _ranks(self) -> list[Any]:
        import psutil

        return psutil.Process().children()

    def _send(self, sig: int) -> None:
        for proc in self._ranks():
            try:
                proc.send_signal(sig)
            except Exception:  # noqa: BLE001  (gone already: nothing to stop)
                pass

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = signum
        self._send(signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)
        if first:
            self._timer = threading.Timer(self.timeout_s, self._send, args=(signal.SIGKILL,))
            self._timer.daemon = True
            self._timer.start()

    def __enter__(self) -> _ForwardStops:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


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
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig as ElasticConfig
    from torch.distributed.launcher.api import elastic_launch

    nproc = ranks_per_node(cfg)
    port = cfg.master_port or _free_port(cfg.master_addr)
    world = cfg.nnodes * nproc
    threads = threads_per_rank(cfg, nproc)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # what each rank's torch uses (the workers inherit it)
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
        rdzv_configs={"rank": cfg.node_rank, "timeout": 900},
        max_restarts=0,  # a failed rank ends the stage; rerunning it resumes from the newest checkpoint
        monitor_interval=0.2,
        start_method="spawn",
        # SIGTERM, SIGINT and SIGUSR1 are ours (_ForwardStops); the agent keeps its default for these two
        signals_to_handle="SIGHUP,SIGQUIT",
        shutdown_timeout=int(cfg.shutdown_timeout_s),
        local_addr=cfg.master_addr if cfg.nnodes == 1 else None,
    )
    with _ForwardStops(cfg.shutdown_timeout_s) as stops:
        try:
            elastic_launch(config, sys.executable)("-m", "frontier", *argv)
        except ChildFailedError as exc:
            _raise_for(exc, stops.signum, stage)
    if stops.signum is not None:  # every rank finished before the stop could take effect
        log.info("%s: %s arrived as the ranks finished; nothing to resume", stage, signal.Signals(stops.signum).name)


def _raise_for(exc: Any, signum: int | None, stage: str) -> None:
    failures: dict[int, Any] = exc.failures
    codes = {rank: f.exitcode for rank, f in failures.items()}
    log.debug("%s: rank exit codes %s", stage, codes)
    if signum is not None and all(c == EXIT_INTERRUPTED or c < 0 for c in codes.values()):
        # The stop checkpoint is collective: one rank's exit 3 means every rank's part of it is saved
        # (a rank still exiting when the agent saw that is the one with a signal's code).
        saved = [f for f in failures.values() if f.exitcode == EXIT_INTERRUPTED]
        name = signal.Signals(signum).name
        if saved:
            raise TrainingInterrupted(_error_file_message(saved[0]) or f"{stage}: stopped by {name} at a checkpoint; "
                                      "run the same command again to resume")  # fmt: skip
        raise TrainingInterrupted(
            f"{stage}: stopped by {name} before a checkpoint could be saved; rerunning resumes from the newest one"
        )
    rank, failure = exc.get_first_failure()
    message = _error_file_message(failure)
    if failure.exitcode < 0:
        what = f"died of {failure.signal_name()}"
    else:
        what = f"failed with exit code {failure.exitcode}"
    if message:
        detail = f": {message}"
    elif failure.exitcode < 0:
        detail = " (killed from outside the run: out of memory, a scheduler or a user)"
    else:
        detail = " (its output above says why)"
    raise RankFailed(
        f"rank {rank} of {stage} {what}{detail}; the other ranks were stopped. Rerunning resumes from the newest "
        "checkpoint",
        exit_code=failure.exitcode if failure.exitcode > 0 else 1,
    )


def _error_file_message(failure: Any) -> str | None:
    """The one line a rank left in its error file (None without one: torch then only names a signal)."""
    if failure.error_file in ("", "<N/A>") or not os.path.isfile(failure.error_file):
        return None
    return _one_line(failure.message) or None


def _one_line(message: Any) -> str:
    text = message if isinstance(message, str) else json.dumps(message)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
