"""The suite runs on every core (tests/conftest.py starts pytest-xdist workers), and only where it should."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, os

def _record(tmp_dir, name):
    info = {"pid": os.getpid(), "worker": os.environ.get("PYTEST_XDIST_WORKER"),
            "count": os.environ.get("PYTEST_XDIST_WORKER_COUNT")}
    with open(os.path.join(os.environ["PROBE_OUT"], name), "w") as f:
        json.dump(info, f)

def test_timed(benchmark):
    benchmark.pedantic(_record, args=(None, "test_timed"), rounds=1, iterations=1)

""" + "".join(f"def test_{i}():\n    _record(None, 'test_{i}')\n\n" for i in range(6))


def _run(tmp_path: Path, *args: str) -> list[dict]:
    """Seven probe tests (one a benchmark) under a copy of the suite's conftest.py; where each ran."""
    suite, out = tmp_path / "suite", tmp_path / "out"
    suite.mkdir()
    out.mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_probe.py").write_text(PROBE)
    (suite / "pytest.ini").write_text("[pytest]\n")  # not the repository's addopts
    # a fresh session, as from a shell: not this one's worker (xdist tells its workers apart by these)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"PROBE_OUT": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args, str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.iterdir())]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: auto means one worker")
def test_by_default_every_test_runs_in_one_of_a_worker_per_core(tmp_path: Path) -> None:
    ran = _run(tmp_path)
    assert len(ran) == 7 and all(r["worker"] and r["worker"].startswith("gw") for r in ran), ran
    workers = int(ran[0]["count"])
    assert workers >= 2
    # no worker started workers of its own: the tests ran in at most `workers` processes, all of one generation
    assert len({r["pid"] for r in ran}) <= workers and {r["count"] for r in ran} == {str(workers)}, ran


@pytest.mark.parametrize("args", [("-n", "0"), ("-p", "no:xdist"), ("--benchmark-only",)])
def test_the_command_line_can_keep_the_run_in_one_process(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Told how many workers, or timing benchmarks (each alone on the machine, which xdist would disable)."""
    ran = _run(tmp_path, *args)
    assert len(ran) == (1 if "--benchmark-only" in args else 7), ran
    assert len({r["pid"] for r in ran}) == 1 and ran[0]["worker"] is None, ran
