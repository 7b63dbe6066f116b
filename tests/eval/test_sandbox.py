"""The sandbox: known-good and hostile programs, each layer checked on its own where it can be."""

from __future__ import annotations

import random
import socket
import time

import psutil
import pytest

from frontier.eval import sandbox
from frontier.eval.sandbox import SandboxLimits, isolation, run_program
from tests.eval.tiny import write_program

FAST = SandboxLimits(timeout_s=3.0, cpu_s=3, memory_mb=512)
NO_GUARD = SandboxLimits(timeout_s=3.0, cpu_s=3, memory_mb=512, guard=False)


def _sleepers(tag: str) -> list[psutil.Process]:
    """Live processes running `sleep <tag>` (a unique duration marks one test's processes)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[1] == tag:
            found.append(proc)
    return found


def _spawner(tag: str) -> str:
    """A program that starts detached `sleep` processes (escaping its process group), then hangs."""
    return write_program(
        f"""
        import subprocess, time
        for _ in range(4):
            subprocess.Popen(["sleep", "{tag}"], start_new_session=True)
        time.sleep(60)
        """
    )


def _assert_reaped(tag: str) -> None:
    deadline = time.monotonic() + 5  # SIGKILL delivery is asynchronous; give the kernel a moment
    while _sleepers(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _sleepers(tag)
    for proc in survivors:  # never leave them behind, even when the test fails
        proc.kill()
    assert not survivors, f"sandboxed processes survived: {[p.pid for p in survivors]}"


def test_correct_program_passes_and_output_is_not_needed():
    result = run_program("assert sum(range(5)) == 10\nprint('ok')\n", FAST)
    assert result.status == "passed" and result.passed


def test_failing_assertion_fails_with_traceback():
    result = run_program("assert 1 + 1 == 3\n", FAST)
    assert result.status == "failed"
    assert "AssertionError" in result.detail


@pytest.mark.parametrize("exit_call", ["import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"])
def test_exiting_early_with_status_zero_does_not_pass(exit_call):
    source = f"{exit_call}\nassert False, 'the tests below never ran'\n"
    assert run_program(source, FAST).status == "failed"


def test_infinite_loop_times_out():
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=1.5, cpu_s=30))
    assert result.status == "timeout"


def test_cpu_limit_kills_a_busy_loop_before_the_wall_clock():
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=60, cpu_s=1))
    assert result.status == "failed"  # SIGXCPU / SIGKILL, not the 60 s timeout
    assert result.returncode != 0


def test_unbounded_allocation_hits_the_memory_limit():
    source = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result = run_program(source, SandboxLimits(timeout_s=20, cpu_s=20, memory_mb=256))
    assert result.status == "failed"
    assert "MemoryError" in result.detail or result.returncode < 0


def test_writing_outside_the_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for attempt in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        "open('../escaped.txt', 'w').write('x')",
    ):
        result = run_program(attempt + "\n", FAST)
        assert result.status == "failed", attempt
        assert "outside the working directory" in result.detail, attempt
    assert not target.exists()


def test_removing_files_outside_the_directory_is_refused(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for attempt in (f"import os\nos.remove({str(victim)!r})", f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        assert run_program(attempt + "\n", FAST).status == "failed", attempt
    assert victim.read_text() == "precious"


def test_writing_inside_the_directory_is_allowed():
    source = "open('note.txt', 'w').write('hi')\nassert open('note.txt').read() == 'hi'\n"
    assert run_program(source, FAST).status == "passed"


@pytest.mark.parametrize(
    "spawn",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])",
        "import os\nos.system('sleep 100 &')",
        "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()",
    ],
)
def test_fork_bomb_is_stopped_by_the_guard(spawn):
    result = run_program(spawn + "\n", FAST)
    assert result.status == "failed"
    assert "spawning processes is not allowed" in result.detail


def test_network_is_refused_by_the_guard():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        result = run_program(source, FAST)
    assert result.status == "failed"
    assert "network access is not allowed" in result.detail


@pytest.mark.skipif(not isolation()["namespaces"], reason="unshare cannot create namespaces on this machine")
def test_network_namespace_blocks_connections_without_the_guard():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        result = run_program(source, NO_GUARD)
    assert result.status == "failed"
    assert "Error" in result.detail  # ConnectionRefused / NetworkUnreachable from the empty namespace


def test_detached_children_are_killed_without_the_guard():
    tag = f"{random.randint(10**6, 10**7)}.25"
    result = run_program(_spawner(tag), SandboxLimits(timeout_s=2.0, cpu_s=5, guard=False))
    assert result.status == "timeout"
    _assert_reaped(tag)


def test_detached_children_are_killed_without_namespaces(monkeypatch):
    """The fallback where unshare is unavailable: the environment-marker sweep reaps escapees."""
    layers = {**isolation(), "prefix": [], "namespaces": False}
    monkeypatch.setattr(sandbox, "isolation", lambda: layers)
    tag = f"{random.randint(10**6, 10**7)}.75"
    result = run_program(_spawner(tag), SandboxLimits(timeout_s=2.0, cpu_s=5, guard=False))
    assert result.status == "timeout"
    _assert_reaped(tag)


@pytest.mark.skipif(
    not isolation()["nproc_limit_enforced"],
    reason="running as root and user 'nobody' cannot run this interpreter: the kernel ignores RLIMIT_NPROC for root",
)
def test_process_limit_is_enforced_by_the_kernel():
    source = write_program(
        """
        import os, time
        made = 0
        try:
            for _ in range(300):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                made += 1
        except OSError:
            pass
        assert made < 300, made
        """
    )
    assert run_program(source, SandboxLimits(timeout_s=10, cpu_s=5, max_processes=16, guard=False)).passed
