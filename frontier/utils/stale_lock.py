"""A Snakemake lock left behind by a run that is gone: found, and removed before it blocks the next run.

Snakemake locks its working directory (.snakemake/locks/) for the length of a run and removes the lock when
the run ends, Ctrl-C and SIGTERM included. A run killed outright (SIGKILL, the OOM killer, a closed terminal's
SIGHUP, a login node's reboot) leaves it, and every later run stops with "Directory cannot be locked" until
someone runs `snakemake --unlock`, which is right only when nothing of that run is still at work.

The lock files do not say whose they are, so every Snakemake that reads the workflow leaves a note of its own
in .snakemake/frontier-runs/ (host, pid, the process's boot and start time, so a reused pid is not taken for
it), removed when it exits. A lock is stale when every note beside it is of a process of this host that no
longer exists, and nothing that run started still works here: no SLURM job in this directory, no Snakemake
or frontier process in it. Then the lock is removed, with one line saying so. Otherwise it stays: a note from
another host cannot be checked from here (Snakemake's own refusal then names --unlock), and work still
running is named with the command that stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

NOTES = "frontier-runs"  # under .snakemake/
# squeue states of a job that is over (shown for MinJobAge seconds after it ends)
_OVER = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}  # fmt: skip


@dataclass(frozen=True)
class Note:
    """One Snakemake process that read the workflow in this directory."""

    host: str
    pid: int
    identity: str  # boot id and start time of the process: a pid reused after it died is another process
    executor: str = ""  # filled in when the run starts (slurm: its jobs outlive it)


def _host() -> str:
    return socket.gethostname()


def _identity(pid: int) -> str | None:
    """Boot id and start time (clock ticks since boot) of a live process; None when there is none (Linux
    /proc; elsewhere whether the pid exists, with no start time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    # field 22, counted after the command name, which is in parentheses and may hold spaces
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def _alive(note: Note) -> bool:
    now = _identity(note.pid)
    return now is not None and (now == note.identity or "?" in (now, note.identity))


def _read(path: Path) -> Note | None:
    try:
        return Note(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # half-written, or not ours: not a note


def write_note(snakemake_dir: Path) -> Path:
    """This process's note, removed when it exits."""
    notes = snakemake_dir / NOTES
    notes.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = notes / f"{_host()}.{pid}"
    path.write_text(json.dumps(asdict(Note(_host(), pid, _identity(pid) or "?"))))
    atexit.register(lambda: path.unlink(missing_ok=True))
    return path


def mark_executor(note: Path, executor: str) -> None:
    """Record the run's executor in its note (a SLURM run's jobs outlive it, so they are asked after)."""
    current = _read(note)
    if current is not None:
        note.write_text(json.dumps({**asdict(current), "executor": executor}))


def _slurm_jobs_here(workdir: Path) -> list[str] | None:
    """Ids of this user's unfinished SLURM jobs working in `workdir`; [] without SLURM; None when squeue fails."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return []
    try:
        shown = subprocess.run([squeue, "-h", "-u", getpass.getuser(), "-o", "%i|%T|%Z"], capture_output=True,
                               text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    jobs = []
    for line in shown.stdout.splitlines():
        job, _, rest = line.partition("|")
        state, _, where = rest.partition("|")
        with contextlib.suppress(OSError):
            if state not in _OVER and Path(where).resolve() == workdir:
                jobs.append(job)
    return jobs


def _ancestry(pid: int) -> list[tuple[int, str]]:
    """`pid` and the processes that started it, up to init: (pid, command name) each (Linux /proc)."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        name, _, rest = stat.partition("(")[2].rpartition(")")
        chain.append((pid, name))
        try:
            pid = int(rest.split()[1])
        except (ValueError, IndexError):
            break
    return chain


def _processes_here(workdir: Path) -> list[tuple[str, str]]:
    """Snakemake and frontier processes working in `workdir` (this host, readable ones): (pid, command line).
    Not this process nor the ones that started it (a `bash run.sh snakemake` around it), nor processes of a
    SLURM job (under a slurmstepd: squeue names their job, and scancel stops them)."""
    mine = {pid for pid, _ in _ancestry(os.getpid())}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid in mine:
            continue
        try:
            if Path(os.readlink(proc / "cwd")).resolve() != workdir:
                continue
            argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue  # gone, or another user's
        if _runs_ours(argv) and "slurmstepd" not in dict(_ancestry(pid)).values():
            command = " ".join(argv)
            found.append((proc.name, command if len(command) <= 60 else command[:59] + "…"))
    return found


def _runs_ours(argv: list[str]) -> bool:
    """Is this command line's program Snakemake or Frontier: `snakemake …`, `python /venv/bin/frontier …`,
    `python -u -m snakemake …`? Their names as arguments (`tail .snakemake/log/…`, `python -c … frontier`)
    are not."""
    ours = ("snakemake", "frontier")
    if not argv or os.path.basename(argv[0]) in ours:
        return bool(argv)
    if not os.path.basename(argv[0]).startswith("python"):
        return False
    for i, arg in enumerate(argv[1:], 1):
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1].split(".")[0] in ours
        if arg == "-c":
            return False
        if not arg.startswith("-"):
            return os.path.basename(arg) in ours  # the script
    return False


def clear_stale_lock(snakemake_dir: Path) -> str | None:
    """Remove the locks in `snakemake_dir` (a workdir's .snakemake) when the run that took them is gone and
    nothing it started still works here. Returns one line to show (what was removed, or what still holds the
    lock), or None when there is nothing to say. Call it before writing this process's own note."""
    workdir = snakemake_dir.parent.resolve()
    notes = sorted((snakemake_dir / NOTES).glob("*")) if (snakemake_dir / NOTES).is_dir() else []
    read = [(path, note) for path in notes if (note := _read(path)) is not None]
    here = _host()
    dead = [(path, note) for path, note in read if note.host == here and not _alive(note)]
    locks = sorted((snakemake_dir / "locks").glob("*.lock"))
    if not locks or len(dead) < len(read) or not dead:
        # No lock; or a run that may hold it lives (here, or on a host this one cannot look into); or a lock
        # no note explains. Snakemake decides: a held lock is its "Directory cannot be locked".
        if not locks:
            for path, _ in dead:
                path.unlink(missing_ok=True)
        return None
    owner = ", ".join(f"pid {note.pid} on {note.host}" for _, note in dead)
    jobs = _slurm_jobs_here(workdir)
    if jobs is None and any(note.executor == "slurm" for _, note in dead):
        return (f"the SLURM run that locked {workdir} ({owner}) is gone, and squeue cannot say whether its jobs "
                "still run; once they are over: snakemake --unlock")  # fmt: skip
    jobs = jobs or []
    processes = _processes_here(workdir)
    if jobs or processes:
        running = ([f"SLURM job {' '.join(jobs)}"] if jobs else []) + [f"{pid} ({cmd})" for pid, cmd in processes]
        stop = ([f"scancel {' '.join(jobs)}"] if jobs else []) + (
            [f"kill {' '.join(pid for pid, _ in processes)}"] if processes else []
        )
        return (f"the run that locked {workdir} ({owner}) is gone, but its work still runs here: "
                f"{', '.join(running)}; rerun once it is over (or stop it: {' and '.join(stop)})")  # fmt: skip
    for lock in locks:
        lock.unlink(missing_ok=True)
    for path, _ in dead:
        path.unlink(missing_ok=True)
    return f"removed the lock left in {workdir} by an interrupted run ({owner}, gone; nothing of it still runs)"
