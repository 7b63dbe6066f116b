"""Execute one untrusted Python program in a sandboxed subprocess and say whether it ran cleanly.

Layers, outermost first (each one is probed once; `isolation()` reports which are active):

- a fresh temporary working directory, removed afterwards; HOME and TMPDIR point into it;
- when this process runs as root and an unprivileged user can run the interpreter, the child
  runs as ``nobody`` (so the kernel enforces RLIMIT_NPROC and file permissions apply);
- when ``unshare`` can create them, new user + network + PID namespaces: no network interface but
  loopback (down), and every process the program starts dies with it, even ones that left the
  process group (the namespace's init is killed);
- resource limits set by the child on itself (see `_sandbox_child`): address space, CPU time,
  process count, file size, no core dumps;
- a wall-clock timeout, after which the whole process group is killed (SIGKILL), followed by a
  sweep that kills any process still carrying this run's marker in its environment (catches a
  process that escaped the group with setsid where no PID namespace exists);
- inside the child, a Python audit hook blocking writes outside the directory, sockets, spawning
  processes and ctypes (``guard``). Without network namespaces this hook is what blocks network
  access, which stops Python code but not native code; that is the documented fallback.

A program passes only when it exits 0 *and* prints the one-time token the child writes after
the program's last line, so ``os._exit(0)`` or a crash of the interpreter cannot pass.

The child interpreter is this one, started with ``-I -S``: programs see the standard library
only (no site-packages), as HumanEval-style tests need.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_MARKER = "FRONTIER_SANDBOX_RUN"
_NOBODY = 65534
_OUTPUT_TAIL = 2000  # characters of stderr kept in a result


@dataclass(frozen=True)
class SandboxLimits:
    """What one execution may use."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 32
    max_file_mb: int = 16
    guard: bool = True  # the in-process audit hook (the kernel-level layers are always used)

    @classmethod
    def from_config(cls, cfg: Any) -> SandboxLimits:
        """From an `evaluate.passk` section."""
        return cls(cfg.timeout_s, cfg.cpu_s, cfg.memory_mb, cfg.max_processes)


@dataclass(frozen=True)
class ExecResult:
    status: Literal["passed", "failed", "timeout"]
    returncode: int | None
    detail: str  # the tail of stderr, or why it did not pass
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _probe(cmd: list[str], user: int | None) -> bool:
    """True when `cmd` runs and exits 0 under the given uid (None: ours)."""
    ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    try:
        done = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, timeout=20, check=False, **ids)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=1)
def isolation() -> dict[str, Any]:
    """Which kernel-level layers this machine supports (probed once per process)."""
    python = [sys.executable, "-I", "-S", "-c", "pass"]
    drop = os.geteuid() == 0 and _probe(python, _NOBODY)
    user = _NOBODY if drop else None
    unshare = shutil.which("unshare")
    prefix: list[str] = []
    if unshare:
        # One unshare(2) call creates the user namespace and, with the capabilities it grants, the
        # network and PID ones; --kill-child ties the program's fate to unshare's.
        candidate = [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]
        if _probe(candidate + python, user):
            prefix = candidate
    return {
        "uid_drop": drop,
        "namespaces": bool(prefix),
        "network": "namespace" if prefix else "python-guard",
        "nproc_limit_enforced": drop or os.geteuid() != 0,
        "prefix": prefix,
    }


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries this run's marker."""
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(_MARKER) == marker:
                proc.kill()


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * _OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run `source` as a Python program under `limits`; passed only if it ran to its end."""
    layers = isolation()
    user = _NOBODY if layers["uid_drop"] else None
    marker = uuid.uuid4().hex
    token = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="frontier-sandbox-"))
    start = time.monotonic()
    try:
        program = workdir / "program.py"
        program.write_text(source, encoding="utf-8")
        if user is not None:
            os.chown(workdir, user, user)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            _MARKER: marker,
        }
        argv = [
            *layers["prefix"],
            sys.executable,
            "-I",
            "-S",
            str(_CHILD),
            str(program),
            str(limits.memory_mb << 20),
            str(limits.cpu_s),
            str(limits.max_processes),
            str(limits.max_file_mb << 20),
            "1" if limits.guard else "0",
        ]
        ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
        out_path, err_path = workdir / ".stdout", workdir / ".stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                **ids,
            )
            timed_out = False
            try:
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(f"{token}\n".encode())
                    proc.stdin.close()
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)  # always: children it left behind die with it
                _kill_marked(marker)
        seconds = time.monotonic() - start
        stdout, stderr = _tail(out_path), _tail(err_path)[-_OUTPUT_TAIL:]
        if timed_out:
            return ExecResult("timeout", None, f"timed out after {limits.timeout_s:g}s\n{stderr}", seconds)
        rc = proc.returncode
        if rc == 0 and stdout.rstrip().endswith(token):
            return ExecResult("passed", rc, stderr, seconds)
        why = stderr or (f"killed by signal {-rc}" if rc and rc < 0 else f"exit status {rc}")
        if rc == 0:
            why = "exited with status 0 before the program's end\n" + stderr
        return ExecResult("failed", rc, why, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
