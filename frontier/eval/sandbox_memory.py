"""Capping a sandbox's memory as memory, not only as address space.

RLIMIT_AS (sandbox_child/limits.py) counts one process's mappings, so memory a process holds without
mapping it escapes it: memfd pages written with write(), SysV shared memory attached then detached,
files on a tmpfs, and every forked child's own address space. Two layers close that:

- a memory cgroup per sandbox (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, swap capped too), which
  charges everything the sandbox's processes allocate, page cache and shmem included, and OOM-kills
  inside the sandbox past the cap. Used where this process may create cgroups (root, or a delegated
  v2 subtree); `describe()` says which. At the end every process left inside is killed at once: v2's
  ``cgroup.kill``, or on v1 a freezer cgroup beside it that holds them still while they are killed;
- a seccomp filter (bwrap ``--seccomp``) refusing the calls that create memory no address space counts
  (memfd_create, memfd_secret, shmget): the memfd and SysV attacks fail even where no cgroup can be
  made, leaving forks (at most ``max_processes`` x ``memory_mb``) as the only uncapped sum there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import signal
import struct
import time
import uuid
from pathlib import Path

from frontier.errors import FrontierError

_CGROUP_PREFIX = "frontier-sandbox-"


# --- seccomp ------------------------------------------------------------------------------------------

# (AUDIT_ARCH_*, {syscall: number}) per machine; other machines get no filter (the cgroup still caps).
_ARCH = {
    "x86_64": (0xC000003E, {"memfd_create": 319, "memfd_secret": 447, "shmget": 29}),
    "aarch64": (0xC00000B7, {"memfd_create": 279, "memfd_secret": 447, "shmget": 194}),
}
_X32_BIT = 0x40000000  # x86_64's x32 ABI: the same calls under other numbers, refused wholesale
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM = 1
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..|JGE|K, BPF_RET|K


def refused_syscalls() -> list[str]:
    """The calls the filter refuses on this machine (empty where no filter is built)."""
    return sorted(_ARCH.get(platform.machine(), (0, {}))[1])


@functools.lru_cache(maxsize=1)
def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program, as bwrap's ``--seccomp FD`` reads it, or None on other machines.

    Layout: a foreign architecture (e.g. i386 through int 0x80, where shmget hides behind ipc()) kills the
    process; each refused call (and x32) returns EPERM, so programs see an ordinary error; all else runs.
    """
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return None
    audit_arch, numbers = arch
    compares = [(_JGE_K, _X32_BIT)] if audit_arch == 0xC000003E else []
    compares += [(_JEQ_K, number) for number in sorted(numbers.values())]
    allow = 3 + len(compares)  # positions of the three returns; a jump of j from i lands on i + 1 + j
    deny, kill = allow + 1, allow + 2
    program = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, kill - 2, audit_arch), (_LD_W_ABS, 0, 0, 0)]  # arch, then nr
    program += [(op, deny - (3 + i) - 1, 0, k) for i, (op, k) in enumerate(compares)]
    program += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | _EPERM), (_RET_K, 0, 0, _RET_KILL_PROCESS)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


# --- cgroups ------------------------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of each mount, from /proc/self/mountinfo."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3:
                found.append((fields[3], fields[4].replace("\\040", " "), tail[0], tail[2]))
    return found


def _own_cgroup(version: str, controller: str = "memory") -> str | None:
    """This process's cgroup path in the v2 hierarchy, or in the v1 hierarchy holding `controller`."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (version == "v2" and controllers == "") or (version == "v1" and controller in controllers.split(",")):
                return path
    return None


def _own_dirs(version: str, controller: str = "memory") -> list[Path]:
    """Where this process's cgroup appears in the mounted `version` hierarchy holding `controller`."""
    own, fstype = _own_cgroup(version, controller), "cgroup2" if version == "v2" else "cgroup"
    found = []
    for root, mountpoint, kind, options in _mounts() if own is not None else []:
        if kind != fstype or (version == "v1" and controller not in options.split(",")):
            continue
        if own != root and not own.startswith(root.rstrip("/") + "/"):
            continue  # this mount shows another part of the hierarchy
        if (parent := Path(mountpoint) / os.path.relpath(own, root)).is_dir():
            found.append(parent)
    return found


def _usable(version: str, parent: Path, control: str | None = None) -> bool:
    """Whether a child cgroup with a memory limit (v1: or with `control`) can be made under `parent` (tried,
    then removed). May enable the memory controller in `parent` (v2): a lasting change, made only by create()."""
    probe = parent / f"{_CGROUP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if version == "v2":
            if "memory" not in (parent / "cgroup.controllers").read_text().split():
                return False
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")  # EBUSY where parent holds processes
        probe.mkdir()
        try:
            return (probe / (control or ("memory.max" if version == "v2" else "memory.limit_in_bytes"))).exists()
        finally:
            probe.rmdir()
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def cgroup_parent() -> tuple[str, Path] | None:
    """("v2" or "v1", the directory sandboxes' cgroups go under), or None where none can be made (probed once,
    by the first create(): see _usable)."""
    for version in ("v2", "v1"):
        for parent in _own_dirs(version):
            if _usable(version, parent):
                return version, parent
    return None


@functools.lru_cache(maxsize=1)
def _freezer_parent() -> Path | None:
    """Where v1 freezer cgroups can be made beside the memory ones, or None (probed once)."""
    return next((p for p in _own_dirs("v1", "freezer") if _usable("v1", p, "freezer.state")), None)


class MemoryCgroup:
    """One sandbox's memory cgroup: created with its cap, processes added, killed and removed at the end.

    On v1 a freezer cgroup of the same name (`freezer`, where one can be made) holds the same processes."""

    def __init__(self, version: str, path: Path) -> None:
        self.version, self.path = version, path
        self.freezer: Path | None = None

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup | None:
        """A new cgroup capped at `limit_bytes` (swap included), or None where cgroups are not available."""
        where = cgroup_parent()
        if where is None:
            return None
        version, parent = where
        path = parent / f"{_CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        group = cls(version, path)
        try:
            path.mkdir()
            if version == "v2":
                (path / "memory.max").write_text(str(limit_bytes))
                group._write_if_present("memory.swap.max", "0")  # swapped-out shmem must not escape the cap
                group._write_if_present("memory.oom.group", "1")  # an OOM kills the whole sandbox
            else:  # the v1 limit first: memsw must never be below it
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                group._write_if_present("memory.memsw.limit_in_bytes", str(limit_bytes))
                if (freezers := _freezer_parent()) is not None:
                    group.freezer = freezers / path.name
                    group.freezer.mkdir()
        except OSError as exc:
            group.close()
            raise FrontierError(f"cannot create the sandbox's memory cgroup {path}: {exc}") from exc
        return group

    def _write_if_present(self, name: str, value: str) -> None:
        if (self.path / name).exists():
            (self.path / name).write_text(value)

    def add(self, pid: int) -> None:
        """Move `pid` in; its later children are born inside (so add it before it starts any)."""
        for path in (self.path, self.freezer):
            if path is not None:
                (path / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        """How many processes the kernel killed here for exceeding the cap."""
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def close(self) -> None:
        """Kill whatever is still inside, then remove the cgroup (which frees nothing it still charges).

        v2's ``cgroup.kill`` (kernel >= 5.14) kills every process inside at once, a fork in flight included;
        on v1 the freezer holds them still while each is killed. Failing both, processes are killed as they
        are listed until none is left, for at most 5 s (a fork loop can outrun that)."""
        deadline = time.monotonic() + 5
        self._kill_at_once(deadline)
        for path in (self.path, self.freezer):
            while path is not None and path.exists():
                _kill_listed(path)
                with contextlib.suppress(OSError):
                    path.rmdir()
                    break
                if time.monotonic() > deadline:
                    break  # left behind, empty soon; a name with our pid in it says whose it was
                time.sleep(0.01)

    def _kill_at_once(self, deadline: float) -> None:
        """v2: write cgroup.kill. v1: freeze the freezer cgroup (no process inside runs, so none forks), SIGKILL
        each, then thaw. Neither: nothing (close() kills what it lists)."""
        if self.version == "v2" and (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.path / "cgroup.kill").write_text("1")
            return
        if self.freezer is None:
            return
        state = self.freezer / "freezer.state"
        try:
            state.write_text("FROZEN")
            while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.005)
            _kill_listed(self.freezer)  # delivered as they thaw
        except OSError:
            pass  # the listing loop in close() still runs
        finally:
            with contextlib.suppress(OSError):
                state.write_text("THAWED")


def _kill_listed(path: Path) -> None:
    """SIGKILL each process `path`'s cgroup.procs lists now."""
    try:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        pids = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def describe() -> str:
    """How memory is capped here, for reports. Read-only: until create() has probed, says so instead of probing
    (the probe may enable a parent's memory controller, which a report must not do)."""
    if cgroup_parent.cache_info().currsize == 0:
        cgroup = "cgroup: not probed yet"
    elif (where := cgroup_parent()) is not None:
        cgroup = f"cgroup {where[0]} memory cap per sandbox"
    else:
        cgroup = "no cgroup: RLIMIT_AS per process"
    refused = refused_syscalls()
    return cgroup + (f"; seccomp refuses {', '.join(refused)}" if refused else "")
