"""How bench/peers.py starts a measured process: its threads, its CPUs, its log, its wall clock."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(threads: int) -> dict[str, str]:
    """The environment of a measured process: `threads` CPU threads, nothing fetched, kernels as users get them."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")  # fmt: skip
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # The test suite runs Triton kernels in its interpreter; a user's CPU run does not (kernels: auto -> torch)
    env.pop("TRITON_INTERPRET", None)
    # Each measured process is a run of its own: no rank variables a launcher, or an earlier
    # init_distributed in this process, left behind (a child would take itself for one of several ranks)
    for key in _LAUNCHER_VARS:
        env.pop(key, None)
    return env


_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip


def cpu_set(count: int) -> list[int] | None:
    """The first `count` CPUs this process may use (None where affinity cannot be set: no pinning there)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    usable = sorted(os.sched_getaffinity(0))
    return usable[: max(1, count)]


def _pin(cpus: list[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def timed(
    cmd: Sequence[str], env: Mapping[str, str], log: Path, *, cwd: Path = REPO, cpus: list[int] | None = None,
    ok: Sequence[int] = (0,),
) -> float:  # fmt: skip
    """Run `cmd` on `cpus` (its children too: they inherit the affinity), output to `log`; seconds from start
    to exit. RuntimeError with the end of the log when it exits with a code not in `ok`.

    Pinning makes "one thread" hold for every process a run starts (worker pools that size themselves
    from the CPUs they may use, background threads), not only for torch's intra-op pool.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(list(cmd), cwd=cwd, env=dict(env), stdout=f, stderr=subprocess.STDOUT,
                              preexec_fn=_pin(cpus), check=False).returncode  # fmt: skip
    seconds = time.perf_counter() - start
    if code not in ok:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... exited {code}; {tail(log)}")
    return seconds


def tail(log: Path, lines: int = 20) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"the end of {log}:\n" + "\n".join(text)
