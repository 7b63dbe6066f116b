"""A Snakemake lock whose run is gone is removed; one that a run may still hold, or whose work still runs, stays.

The whole story on a real SLURM cluster (a run killed mid-job, its job still running, then stopped) is in
tests/workflow/test_slurm.py; here each rule of frontier.utils.stale_lock on its own, with real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frontier.utils import stale_lock
from frontier.utils.stale_lock import NOTES, Note, clear_stale_lock, mark_executor, write_note

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def _workdir(tmp_path: Path) -> Path:
    """A working directory locked by a run, as Snakemake leaves it: .snakemake/locks/0.{input,output}.lock."""
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    for kind in ("input", "output"):
        (locks / f"0.{kind}.lock").write_text("data/prepared\n")
    return tmp_path / ".snakemake"


def _note_of(snakemake_dir: Path, proc: subprocess.Popen, host: str | None = None) -> Path:
    """The note `proc` would have left (as write_note writes it, in that process)."""
    notes = snakemake_dir / NOTES
    notes.mkdir(exist_ok=True)
    host = host or stale_lock._host()
    path = notes / f"{host}.{proc.pid}"
    path.write_text(json.dumps({"host": host, "pid": proc.pid, "identity": stale_lock._identity(proc.pid)}))
    return path


def _a_dead_run(snakemake_dir: Path) -> Path:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    note = _note_of(snakemake_dir, proc)
    proc.wait()
    return note


def test_a_lock_whose_run_is_gone_is_removed(tmp_path: Path) -> None:
    snakemake_dir = _workdir(tmp_path)
    note = _a_dead_run(snakemake_dir)
    said = clear_stale_lock(snakemake_dir)
    assert said and said.startswith(f"removed the lock left in {tmp_path.resolve()} by an interrupted run"), said
    assert not list((snakemake_dir / "locks").glob("*.lock")) and not note.exists()


def test_a_lock_a_live_run_may_hold_stays(tmp_path: Path) -> None:
    snakemake_dir = _workdir(tmp_path)
    _a_dead_run(snakemake_dir)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _note_of(snakemake_dir, live)
        assert clear_stale_lock(snakemake_dir) is None  # Snakemake's own "cannot be locked" decides
    finally:
        live.kill()
        live.wait()
    assert len(list((snakemake_dir / "locks").glob("*.lock"))) == 2


def test_a_reused_pid_is_not_the_run(tmp_path: Path) -> None:
    """The note's process is gone, and another one has its pid: the start time tells them apart."""
    snakemake_dir = _workdir(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        note = _note_of(snakemake_dir, live)
        note.write_text(json.dumps({**json.loads(note.read_text()), "identity": "another-boot:1"}))
        assert clear_stale_lock(snakemake_dir).startswith("removed the lock")
    finally:
        live.kill()
        live.wait()


def test_a_lock_from_another_host_or_without_a_note_stays(tmp_path: Path) -> None:
    snakemake_dir = _workdir(tmp_path)
    assert clear_stale_lock(snakemake_dir) is None  # no note: not ours to judge
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _note_of(snakemake_dir, proc, host="another-login-node")
    proc.wait()
    _a_dead_run(snakemake_dir)
    assert clear_stale_lock(snakemake_dir) is None  # that host's process cannot be looked at from here
    assert len(list((snakemake_dir / "locks").glob("*.lock"))) == 2


def test_work_of_the_gone_run_still_running_here_is_named(tmp_path: Path) -> None:
    """A stage the killed run started locally outlives it: the lock stays, and the line says what to stop."""
    snakemake_dir = _workdir(tmp_path)
    _a_dead_run(snakemake_dir)
    # a process that runs `frontier` (its command line's program), working in that directory
    stage = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "frontier"], cwd=tmp_path)
    fake = tmp_path / "bin" / "frontier"
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(60)\n")
    frontier = subprocess.Popen([sys.executable, str(fake), "train"], cwd=tmp_path)
    try:
        said = clear_stale_lock(snakemake_dir)
    finally:
        for proc in (stage, frontier):
            proc.kill()
            proc.wait()
    assert said and "its work still runs here" in said and f"kill {frontier.pid})" in said, said
    assert str(stage.pid) not in said  # "frontier" only as an argument: not a frontier process
    assert len(list((snakemake_dir / "locks").glob("*.lock"))) == 2
    assert clear_stale_lock(snakemake_dir).startswith("removed the lock")  # once it is over


def test_a_note_lives_as_long_as_its_process_and_records_the_executor(tmp_path: Path) -> None:
    snakemake_dir = tmp_path / ".snakemake"
    script = (
        "import sys; from pathlib import Path; from frontier.utils.stale_lock import write_note, mark_executor; "
        "note = write_note(Path(sys.argv[1])); mark_executor(note, 'slurm'); print(note.read_text())"
    )
    shown = subprocess.run([sys.executable, "-c", script, str(snakemake_dir)], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert json.loads(shown)["executor"] == "slurm"
    assert not list((snakemake_dir / NOTES).iterdir())  # removed at exit
    note = write_note(snakemake_dir)  # this process's, alive
    mark_executor(note, "slurm")
    me = os.getpid()
    assert Note(**json.loads(note.read_text())) == Note(stale_lock._host(), me, stale_lock._identity(me), "slurm")
    note.unlink()
