"""Execute untrusted Python (model-generated completions) under bubblewrap, and decide verdicts outside it.

Isolation (bubblewrap, ``bwrap``; Debian's package ``bubblewrap``), for every run:

- an unprivileged uid: bwrap is started as ``nobody`` when Frontier runs as root (as the caller
  otherwise), so the kernel enforces RLIMIT_NPROC and file permissions;
- new user, PID, network, IPC, UTS and cgroup namespaces: no network interface but a dead loopback,
  no other process visible, every process the program starts dies with the sandbox (``--die-with-parent``
  and the PID namespace's end), no capabilities;
- a minimal read-only root: only the interpreter, its standard library and the shared libraries they
  load (found with ldd), plus /proc and a minimal /dev; no host file is visible;
- a private writable directory (``/work``, tmpfs) capped at ``disk_mb``;
- resource limits the child sets on itself before untrusted code runs (sandbox_child/limits.py):
  address space, CPU seconds, processes, file size, no core dumps; and a wall-clock timeout after
  which the whole sandbox is killed;
- memory capped as memory (sandbox_memory.py): a memory cgroup per sandbox where one can be made, and a
  seccomp filter refusing memfd_create and SysV shared memory, which no address-space limit counts.

Verdicts (``run_check``): the completion runs in one sandbox and serves calls of its functions; the
problem's test runs in a second sandbox, where ``candidate(...)`` is a proxy whose results come back as
plain data (sandbox_child/codec.py). Only the test's process, which runs no completion code, can write
``PASS`` on a pipe only it holds, and only when no call of the candidate failed. A completion that exits
early, prints anything, patches builtins, returns an object with a rigged ``__eq__`` or raises (even
StopIteration, which would quietly end a ``map`` in the test's ``all()``) cannot pass
(sandbox_child/check.py).

Without a usable bwrap nothing untrusted runs (`SandboxUnavailable`), unless the caller sets
``unsafe_no_sandbox`` (params: ``evaluate.passk.unsafe_run_without_sandbox``): then the same scripts run
as plain subprocesses with only the resource limits, and a warning says so on every call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from frontier.errors import FrontierError
from frontier.eval import sandbox_memory
from frontier.eval.sandbox_memory import MemoryCgroup

log = logging.getLogger(__name__)

_CHILD = Path(__file__).with_name("sandbox_child")
_NOBODY = 65534
_OUTPUT_TAIL = 2000  # characters of stderr kept in a result
_INSIDE = "/sandbox"  # the child scripts and the problem's files, read-only
_WORK = "/work"  # the private writable directory
_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")  # fallbacks an unprivileged uid can run
# Waits for one byte on fd argv[1] (EOF: the parent gave up, so run nothing), then becomes argv[2:].
_GATE = "import os, sys\nfd = int(sys.argv[1])\ngo = os.read(fd, 1)\nos.close(fd)\ngo and os.execv(sys.argv[2], sys.argv[2:])\nsys.exit(1)"
# The same gate in bash ($0: the fd, "$@": the command), several times cheaper to start than an interpreter;
# used where /bin/bash exists (dash, many a /bin/sh, cannot name an fd above 9). The fd is closed before the
# exec (eval: a redirection's fd number must be literal); no startup file is read (-c, and no BASH_ENV).
_SH_GATE = 'read -r go <&"$0" || exit 1; eval "exec $0<&-"; exec "$@"'
_SH = "/bin/bash"
# The start-up probe: runs as nobody, and (argv[1] == "seccomp") under the filter every run gets.
_PROBE = """import json, os, sys
assert os.getuid() == 65534, "not running as nobody"
if sys.argv[1] == "seccomp":
    try:
        os.close(os.memfd_create("probe"))
    except PermissionError:
        pass
    else:
        sys.exit("the seccomp filter is not in force")
"""


class SandboxUnavailable(FrontierError):
    """No isolation tool can run here, and running untrusted code without one was not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one execution may use."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 32
    max_file_mb: int = 16
    disk_mb: int = 64  # the writable /work directory
    unsafe_no_sandbox: bool = False  # run without isolation when bwrap cannot: resource limits only

    @classmethod
    def from_config(cls, cfg: Any) -> SandboxLimits:
        """From an `evaluate.passk` section."""
        return cls(
            timeout_s=cfg.timeout_s,
            cpu_s=cfg.cpu_s,
            memory_mb=cfg.memory_mb,
            max_processes=cfg.max_processes,
            disk_mb=cfg.disk_mb,
            unsafe_no_sandbox=cfg.unsafe_run_without_sandbox,
        )

    def rlimits(self) -> list[str]:
        return [str(self.memory_mb << 20), str(self.cpu_s), str(self.max_processes), str(self.max_file_mb << 20)]


@dataclass(frozen=True)
class ExecResult:
    status: Literal["passed", "failed", "timeout"]
    returncode: int | None
    detail: str  # the tail of stderr, or why it did not pass
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


_PROBE_LIMITS = SandboxLimits(memory_mb=256)  # the probe's memory cgroup: room for an interpreter


# --- what this machine offers -------------------------------------------------------------------------


def _run_quiet(cmd: list[str], user: int | None = None) -> subprocess.CompletedProcess | None:
    ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    try:
        return subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=30, check=False, **ids)
    except (OSError, subprocess.SubprocessError):
        return None


def _runtime_paths(python: str) -> list[str]:
    """The files and directories `python -I -S` needs: itself, its stdlib, and every shared library they load."""
    probe = _run_quiet(
        [python, "-I", "-S", "-c", "import sys, sysconfig; print(sys.executable); "
         "print(sysconfig.get_path('stdlib')); print(sysconfig.get_config_var('DESTSHARED') or '')"]
    )  # fmt: skip
    if probe is None or probe.returncode != 0:
        return []
    executable, stdlib, dynload = (probe.stdout.splitlines() + ["", "", ""])[:3]
    paths = {os.path.realpath(executable), executable, stdlib}
    binaries = [executable]
    if dynload and os.path.isdir(dynload):
        paths.add(dynload)
        binaries += [str(p) for p in sorted(Path(dynload).glob("*.so"))]
    ldd = _run_quiet(["ldd", *binaries]) if shutil.which("ldd") else None
    for line in (ldd.stdout if ldd else "").splitlines():
        # "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "\t/lib64/ld-linux-x86-64.so.2 (0x...)"
        for token in line.split():
            if token.startswith("/") and os.path.exists(token):
                paths.add(token)
                paths.add(os.path.realpath(token))
    return sorted(p for p in paths if p)


def _user() -> int | None:
    """The uid to start bwrap as: nobody when we are root, else ourselves (already unprivileged)."""
    return _NOBODY if os.geteuid() == 0 else None


def _bwrap_prefix(bwrap: str, python: str, runtime: list[str], stage: Path, disk_mb: int) -> list[str]:
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    argv += ["--uid", str(_NOBODY), "--gid", str(_NOBODY)]
    for path in runtime:
        argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", str(stage), _INSIDE]
    argv += ["--size", str(disk_mb << 20), "--tmpfs", _WORK, "--chdir", _WORK]
    # bwrap's own root and /dev are tmpfs too: read-only, so /work's cap is the only place to write
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return argv


def _last_line(text: str, default: str = "no output") -> str:
    return (text.strip().splitlines() or [default])[-1].strip()


@functools.lru_cache(maxsize=1)
def isolation() -> dict[str, Any]:
    """How untrusted code can run here: bwrap and an interpreter it can start (probed once per process).

    The probe starts its interpreter exactly as every run does (`_start`: seccomp filter, memory cgroup and
    gate included), so a layer that fails here makes runs refuse (`SandboxUnavailable`) rather than fail."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return {"sandbox": None, "why": "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"}
    user = _user()
    seccomp = "seccomp" if sandbox_memory.seccomp_filter() is not None else "-"
    stage = Path(tempfile.mkdtemp(prefix="frontier-probe-"))
    try:
        stage.chmod(0o755)
        tried = []
        for python in dict.fromkeys([sys.executable, *_PYTHONS]):
            if not os.path.exists(python):
                continue
            runtime = _runtime_paths(python)
            if not runtime:
                continue
            argv = [*_bwrap_prefix(bwrap, python, runtime, stage, 1), python, "-I", "-S", "-c", _PROBE, seccomp]
            why = _probe(argv, python, user)
            if why is None:
                return {"sandbox": "bubblewrap", "bwrap": bwrap, "python": python, "runtime": runtime,
                        "uid": _NOBODY if user is not None else os.geteuid(), "network": "none"}  # fmt: skip
            tried.append(f"{python}: {why}")
        return {"sandbox": None, "why": "bwrap could not start an interpreter: " + "; ".join(tried)}
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _probe(argv: list[str], python: str, user: int | None) -> str | None:
    """None when `argv` ran and exited 0 through the runs' launcher, else why not (one line)."""
    with tempfile.TemporaryFile() as err:
        try:
            box = _start(argv, python, user, "/", (), _PROBE_LIMITS, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        except (OSError, FrontierError) as exc:
            return _last_line(str(exc), type(exc).__name__)
        try:
            _wait(box.proc, 30)
        except subprocess.TimeoutExpired:
            return "timed out"
        finally:
            _kill(box)
        return None if box.proc.returncode == 0 else _last_line(_tail(err))


def describe() -> dict[str, Any]:
    """What isolation() found, without the long runtime list (for metrics and reports). Probes nothing: a report
    must not change the machine (probing can enable a parent cgroup's memory controller)."""
    if isolation.cache_info().currsize == 0:
        return {"sandbox": "not probed yet", "memory": sandbox_memory.describe()}
    return {**{k: v for k, v in isolation().items() if k != "runtime"}, "memory": sandbox_memory.describe()}


# --- running ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stage(files: dict[str, str]) -> Any:
    """A directory readable by the sandbox's uid holding the child scripts and `files` (bound read-only)."""
    stage = Path(tempfile.mkdtemp(prefix="frontier-sandbox-"))
    try:
        for script in _CHILD.glob("*.py"):
            shutil.copyfile(script, stage / script.name)
        for name, text in files.items():
            (stage / name).write_text(text, encoding="utf-8")
        for path in [stage, *stage.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def require_isolation(limits: SandboxLimits) -> None:
    """SandboxUnavailable unless untrusted code can run here under `limits` (a sandbox, or unsafe allowed)."""
    layers = isolation()
    if not layers["sandbox"] and not limits.unsafe_no_sandbox:
        raise SandboxUnavailable(
            f"refusing to run model-generated code without a sandbox ({layers['why']}); install bubblewrap or fix "
            "what stops it, or set evaluate.passk.unsafe_run_without_sandbox: true to run it with resource limits only"
        )


def _launcher(limits: SandboxLimits, stage: Path) -> tuple[list[str], str, str, int | None]:
    """(argv prefix, interpreter, where the staged files appear, uid to start as) for one sandbox."""
    layers = isolation()
    if layers["sandbox"]:
        prefix = _bwrap_prefix(layers["bwrap"], layers["python"], layers["runtime"], stage, limits.disk_mb)
        return prefix, layers["python"], _INSIDE, _user()
    require_isolation(limits)
    log.warning("UNSAFE: running untrusted code WITHOUT a sandbox (%s): it can read and change this machine",
                layers["why"])  # fmt: skip
    return [], sys.executable, str(stage), None


@dataclass
class _Box:
    """One started sandbox: its process (bwrap, or the bare interpreter when unsafe) and its memory cgroup."""

    proc: subprocess.Popen
    cgroup: MemoryCgroup | None
    oom_kills: int = 0


def _start(argv: list[str], python: str, user: int | None, cwd: str, pass_fds: tuple[int, ...],
           limits: SandboxLimits, **io: Any) -> _Box:  # fmt: skip
    """Start `argv` (`python`: an interpreter `user` can run) in its own session and memory cgroup: the one
    launcher of the start-up probe and of every run. A bwrap `argv` gets the seccomp filter (--seccomp)."""
    ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    env = {"PATH": "/usr/bin:/bin", "HOME": _WORK, "TMPDIR": _WORK, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    fds, ours = list(pass_fds), _Pipes()
    cgroup = MemoryCgroup.create(limits.memory_mb << 20)
    try:
        bpf = sandbox_memory.seccomp_filter()
        if os.path.basename(argv[0]) == "bwrap" and bpf is not None:
            program_r, program_w = ours.pipe()
            os.write(program_w, bpf)  # a few hundred bytes: never blocks on a pipe's buffer
            ours.close(program_w)
            fds.append(program_r)
            argv = [argv[0], "--seccomp", str(program_r), *argv[1:]]
        if cgroup is not None:
            # A gate (a line of bash, else a few of Python) waits until it is inside the cgroup, then becomes bwrap,
            # so every process of the sandbox is born inside (a process moved later would leave its children outside).
            gate_r, gate_w = ours.pipe()
            fds.append(gate_r)
            if os.path.exists(_SH):
                argv = [_SH, "--norc", "--noprofile", "-c", _SH_GATE, str(gate_r), *argv]
            else:
                argv = [python, "-I", "-S", "-c", _GATE, str(gate_r), *argv]
        proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True, close_fds=True,
                                pass_fds=tuple(fds), **ids, **io)  # fmt: skip
        box = _Box(proc, cgroup)
        if cgroup is not None:
            try:
                cgroup.add(proc.pid)
            except OSError as exc:
                _kill(box)  # the gate never opens: nothing ran outside the cap
                raise FrontierError(f"cannot move the sandbox into its memory cgroup: {exc}") from exc
            with contextlib.suppress(OSError):
                os.write(gate_w, b"go\n")
        return box
    except BaseException:
        if cgroup is not None:
            cgroup.close()
        raise
    finally:
        ours.close_all()


def _wait(proc: subprocess.Popen, timeout: float) -> None:
    """proc.wait(timeout), woken the moment the process ends (a pidfd) rather than by Popen's polling, whose
    sleeps grow to 50 ms: most of a quick check's wall time otherwise. TimeoutExpired as Popen.wait."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3), or already reaped
        proc.wait(timeout=timeout)
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    proc.wait()  # ended: reaps it at once


def _kill(box: _Box) -> None:
    """SIGKILL the process group (bwrap and, through --die-with-parent and the PID namespace, all inside),
    then whatever is left in its cgroup, all at once where the kernel can (MemoryCgroup.close), and remove that."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(box.proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        box.proc.wait(timeout=5)
    if box.cgroup is not None:
        box.oom_kills += box.cgroup.oom_kills()
        box.cgroup.close()
        box.cgroup = None


def _memory_note(limits: SandboxLimits, *boxes: _Box) -> str:
    """Why a sandbox died, when the kernel killed it for memory (its exit status alone says only SIGKILL)."""
    hit = any(b.oom_kills for b in boxes)
    return f"killed: over the sandbox's memory cap of {limits.memory_mb} MiB\n" if hit else ""


def _tail(stream: IO[bytes] | None) -> str:
    if stream is None:
        return ""
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - 4 * _OUTPUT_TAIL))
    return stream.read().decode("utf-8", "replace")[-_OUTPUT_TAIL:]


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run `source` as a Python program in the sandbox; "passed" means it exited with status 0.

    For containment (what a program can reach); a pass/fail verdict on a completion is `run_check`'s.
    """
    start = time.monotonic()
    with _stage({"main.py": source}) as stage, tempfile.TemporaryFile() as err:
        prefix, python, inside, user = _launcher(limits, stage)
        argv = [*prefix, python, "-I", "-S", f"{inside}/program.py", f"{inside}/main.py", *limits.rlimits()]
        workdir = tempfile.mkdtemp(prefix="frontier-work-") if not prefix else "/"
        try:
            box = _start(argv, python, user, workdir, (), limits, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=err)  # fmt: skip
            try:
                _wait(box.proc, limits.timeout_s)
            except subprocess.TimeoutExpired:
                return ExecResult("timeout", None, f"timed out after {limits.timeout_s:g}s\n{_tail(err)}",
                                  time.monotonic() - start)  # fmt: skip
            finally:
                _kill(box)
        finally:
            if not prefix:
                shutil.rmtree(workdir, ignore_errors=True)
        rc, detail = box.proc.returncode, _memory_note(limits, box) + _tail(err)
        status = "passed" if rc == 0 else "failed"
        return ExecResult(status, rc, detail or (f"exit status {rc}" if rc else ""), time.monotonic() - start)


def run_check(prompt: str, completion: str, test: str, entry_point: str,
              limits: SandboxLimits = SandboxLimits()) -> ExecResult:  # fmt: skip
    """HumanEval's verdict on one completion, decided outside the completion's process (module docstring)."""
    start = time.monotonic()
    pipes = _Pipes()
    requests_r, requests_w = pipes.pipe()
    replies_r, replies_w = pipes.pipe()
    verdict_r, verdict_w = pipes.pipe()
    boxes: list[_Box] = []
    work: list[str] = []
    verdict = b""
    # Two stages: the completion's sandbox never sees the test (nor its expected answers).
    with (
        _stage({"solution.py": prompt + completion + "\n"}) as solution_stage,
        _stage({"prompt.py": prompt, "test.py": test}) as test_stage,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as serve_err,
    ):
        try:
            prefix, python, inside, user = _launcher(limits, solution_stage)
            serve = [*prefix, python, "-I", "-S", f"{inside}/serve.py", f"{inside}/solution.py", str(replies_w),
                     *limits.rlimits()]  # fmt: skip
            work = [tempfile.mkdtemp(prefix="frontier-work-") for _ in range(2)] if not prefix else []
            boxes.append(_start(serve, python, user, work[0] if work else "/", (replies_w,), limits, stdin=requests_r,
                                stdout=subprocess.DEVNULL, stderr=serve_err))  # fmt: skip
            prefix, python, inside, user = _launcher(limits, test_stage)
            check = [*prefix, python, "-I", "-S", f"{inside}/check.py", f"{inside}/prompt.py", f"{inside}/test.py",
                     entry_point, str(requests_w), str(replies_r), str(verdict_w), *limits.rlimits()]  # fmt: skip
            boxes.append(_start(check, python, user, work[1] if work else "/", (requests_w, replies_r, verdict_w),
                                limits, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err))  # fmt: skip
            pipes.close(requests_r, requests_w, replies_r, replies_w, verdict_w)  # a dead peer now reads as EOF
            try:
                _wait(boxes[1].proc, limits.timeout_s)
            except subprocess.TimeoutExpired:
                return ExecResult("timeout", None, f"timed out after {limits.timeout_s:g}s\n{_tail(err)}",
                                  time.monotonic() - start)  # fmt: skip
            os.set_blocking(verdict_r, False)
            with contextlib.suppress(BlockingIOError):
                verdict = os.read(verdict_r, 16)
        finally:
            for box in boxes:
                _kill(box)
            pipes.close_all()
            for path in work:
                shutil.rmtree(path, ignore_errors=True)
        seconds = time.monotonic() - start
        rc = boxes[1].proc.returncode
        if rc == 0 and verdict == b"PASS\n":
            return ExecResult("passed", rc, "", seconds)
        detail = _memory_note(limits, *boxes) + (_tail(err) or _tail(serve_err) or f"exit status {rc}")
        return ExecResult("failed", rc, detail, seconds)


class _Pipes:
    """os.pipe() ends closed exactly once (a closed fd number is soon reused by another file)."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open.update((r, w))
        return r, w

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self.open:
                self.open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self.open))
