"""Capping a sandbox's memory as memory, not only as address space.

RLIMIT_AS (sandbox_child/limits.py) counts one process's mappings, so memory a process holds without
mapping it escapes it: memfd pages written with write(), SysV shared memory attached then detached,
files on a tmpfs, and every forked child's own address space. Two layers close that:

- a memory cgroup per sandbox (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, swap capped too), which
  charges everything the sandbox's processes allocate, page cache and shmem included, and OOM-kills
  inside the sandbox past the cap. Used where this process may create cgroups (root, or a delegated
  v2 subtree); `describe()` says which;
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


def _own_cgroup(version: str) -> str | None:
    """This process's cgroup path in the v2 hierarchy, or in the v1 hierarchy holding the memory controller."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (version == "v2" and controllers == "") or (version == "v1" and "memory" in controllers.split(",")):
                return path
    return None


def _usable(version: str, parent: Path) -> bool:
    """Whether a child cgroup with a memory limit can be made under `parent` (tried, then removed)."""
    probe = parent / f"{_CGROUP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if version == "v2":
            if "memory" not in (parent / "cgroup.controllers").read_text().split():
                return False
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")  # EBUSY where parent holds processes
        probe.mkdir()
        try:
            return (probe / ("memory.max" if version == "v2" else "memory.limit_in_bytes")).exists()
        finally:
            probe.rmdir()
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def cgroup_parent() -> tuple[str, Path] | None:
    """("v2" or "v1", the directory sandboxes' cgroups go under), or None where none can be made (probed once)."""
    for version, fstype in (("v2", "cgroup2"), ("v1", "cgroup")):
        own = _own_cgroup(version)
        if own is None:
            continue
        for root, mountpoint, kind, options in _mounts():
            if kind != fstype or (version == "v1" and "memory" not in options.split(",")):
                continue
            if own != root and not own.startswith(root.rstrip("/") + "/"):
                continue  # this mount shows another part of the hierarchy
            parent = Path(mountpoint) / os.path.relpath(own, root)
            if parent.is_dir() and _usable(version, parent):
                return version, parent
    return None


class MemoryCgroup:
    """One sandbox's memory cgroup: created with its cap, processes added, killed and removed at the end."""

    def __init__(self, version: str, path: Path) -> None:
        self.version, self.path = version, path

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
        except OSError as exc:
            group.close()
            raise FrontierError(f"cannot create the sandbox's memory cgroup {path}: {exc}") from exc
        return group

    def _write_if_present(self, name: str, value: str) -> None:
        if (self.path / name).exists():
            (self.path / name).write_text(value)

    def add(self, pid: int) -> None:
        """Move `pid` in; its later children are born inside (so add it before it starts any)."""
        (self.path / "cgroup.procs").write_text(str(pid))

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
        """SIGKILL whatever is still inside, then remove the cgroup (which frees nothing it still charges)."""
        deadline = time.monotonic() + 5
        while self.path.exists():
            try:
                pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.path.rmdir()
                return
            if time.monotonic() > deadline:
                return  # left behind, empty soon; a name with our pid in it says whose it was
            time.sleep(0.01)


def describe() -> str:
    """How memory is capped here, for reports."""
    where = cgroup_parent()
    cgroup = f"cgroup {where[0]} memory cap per sandbox" if where else "no cgroup: RLIMIT_AS per process"
    refused = refused_syscalls()
    return cgroup + (f"; seccomp refuses {', '.join(refused)}" if refused else "")
