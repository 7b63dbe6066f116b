"""A hostile world: completions that try to forge pass@k's verdict, or to hold memory past the cap.

Every attack asserts its own success; the sandbox must turn each into a failure. The verdict attacks
use tests that are easy to fool (a ``map`` inside ``all()``, a bare ``except``), because a completion's
exception must not decide a verdict whatever the test does with it.
"""

from __future__ import annotations

import contextlib
import textwrap
import time
import uuid

import psutil
import pytest

from frontier.eval import sandbox, sandbox_memory
from frontier.eval.sandbox import SandboxLimits, isolation, run_check, run_program
from frontier.eval.sandbox_memory import MemoryCgroup

needs_sandbox = pytest.mark.skipif(
    not isolation()["sandbox"], reason=f"no sandbox on this machine: {isolation().get('why')}"
)
FAST = SandboxLimits(timeout_s=10.0, cpu_s=5, memory_mb=512, max_processes=16, disk_mb=8)
PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
# StopIteration escaping the candidate would end map()/filter() early: all() of nothing is True
TEST_MAP = "def check(candidate):\n    assert all(map(lambda a: candidate(a, 1) == a + 1, [1, 2, 3]))\n"
TEST_FILTER = "def check(candidate):\n    assert not list(filter(lambda a: candidate(a, 1) != a + 1, [1, 2, 3]))\n"
# a test that tolerates a failing call (a fallback value): any error would pass it
TEST_BARE = "def check(candidate):\n    try:\n        result = candidate(1, 2)\n    except:  # noqa: E722\n        result = 3\n    assert result == 3\n"  # fmt: skip


def check(completion: str, test: str) -> str:
    body = textwrap.indent(textwrap.dedent(completion).lstrip(), "    ")
    return run_check(PROMPT, body, test, "add", FAST).status


@needs_sandbox
@pytest.mark.parametrize("test", [TEST_MAP, TEST_FILTER, TEST_BARE], ids=["map", "filter", "bare-except"])
def test_the_tests_are_passed_by_a_right_answer(test: str) -> None:
    assert check("return a + b", test) == "passed"


@needs_sandbox
@pytest.mark.parametrize("test", [TEST_MAP, TEST_FILTER], ids=["map", "filter"])
@pytest.mark.parametrize("raised", ["StopIteration", "StopIteration(True)"])
def test_stop_iteration_cannot_end_the_tests_iteration(test: str, raised: str) -> None:
    assert check(f"raise {raised}", test) == "failed"


@needs_sandbox
@pytest.mark.parametrize(
    "completion",
    [
        "raise ValueError('swallowed')",
        "raise KeyboardInterrupt",
        "raise GeneratorExit",
        "raise SystemExit(0)",
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",  # the completion's process dies mid-call
        "class Mine(BaseException):\n    pass\nraise Mine()",
        "class Rigged:\n    def __eq__(self, other):\n        raise StopIteration\nreturn Rigged()",  # not plain data
        "import os, sys\nos.write(int(sys.argv[2]), b'not json\\n')\nreturn 3",  # a forged reply line
        "import os, sys\nos.write(int(sys.argv[2]), b'{\"error\": 1}\\n')\nreturn 3",  # ... malformed
        "return " + "[" * 400 + "0" + "]" * 400,  # past the codec's depth: the reply cannot be decoded
    ],
    ids=[
        "ValueError",
        "KeyboardInterrupt",
        "GeneratorExit",
        "SystemExit",
        "sys.exit",
        "os._exit",
        "BaseException",
        "rigged-eq",
        "forged-reply",
        "malformed-reply",
        "too-deep",
    ],
)
def test_a_failed_call_fails_the_verdict_even_when_the_test_swallows_it(completion: str) -> None:
    assert check(completion, TEST_BARE) == "failed"


@needs_sandbox
def test_a_failure_reaches_the_result_detail() -> None:
    result = run_check(PROMPT, "    raise StopIteration\n", TEST_MAP, "add", FAST)
    assert not result.passed and "CandidateFailed" in result.detail and "StopIteration" in result.detail


# --- memory held where no address space counts it ---------------------------------------------------------

SMALL = SandboxLimits(timeout_s=20.0, cpu_s=10, memory_mb=256, max_processes=16, disk_mb=8)
needs_cgroup = pytest.mark.skipif(
    sandbox_memory.cgroup_parent() is None, reason="no memory cgroup can be made here: only RLIMIT_AS per process"
)


def contained(source: str, limits: SandboxLimits = SMALL) -> str:
    result = run_program(textwrap.dedent(source).lstrip(), limits)
    assert result.status != "passed", f"attack succeeded:\n{source}"
    return result.detail


@needs_sandbox
def test_memfd_pages_count() -> None:
    contained("""
        import os
        held = []
        for _ in range(40):  # 600 MiB in memfds of 15 MiB (each under RLIMIT_FSIZE), none of it mapped
            fd = os.memfd_create("hold")
            for _ in range(15):
                os.write(fd, b"x" * (1 << 20))
            held.append(fd)
    """)


@needs_sandbox
def test_sysv_shared_memory_counts() -> None:
    contained("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        for _ in range(12):  # 600 MiB, each segment detached (out of the address space) once filled
            segment = libc.shmget(0, 50 << 20, 0o1600)
            assert segment >= 0, ctypes.get_errno()
            address = libc.shmat(segment, None, 0)
            assert address not in (None, ctypes.c_void_p(-1).value)
            ctypes.memset(address, 1, 50 << 20)
            libc.shmdt(ctypes.c_void_p(address))
    """)


@needs_sandbox
@needs_cgroup
def test_forked_children_share_one_cap() -> None:
    detail = contained("""
        import os, time
        children = []
        for _ in range(4):  # 4 x 150 MiB: each child within RLIMIT_AS, the sum over the cap
            pid = os.fork()
            if pid == 0:
                block = bytearray(150 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(2)
                os._exit(0)
            children.append(pid)
        assert all(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in children)
    """)
    assert "memory cap of 256 MiB" in detail


@needs_sandbox
@needs_cgroup
def test_files_on_the_private_tmpfs_count() -> None:
    contained("""
        for n in range(40):  # 600 MiB of files in /work, whose own size cap is larger
            with open(f"/work/f{n}", "wb") as f:
                for _ in range(15):
                    f.write(b"x" * (1 << 20))
    """, SandboxLimits(timeout_s=20.0, cpu_s=10, memory_mb=256, disk_mb=2048))  # fmt: skip


@needs_sandbox
def test_a_program_within_the_cap_still_runs() -> None:
    result = run_program(textwrap.dedent("""
        import os
        block = bytearray(128 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        if os.fork() == 0:
            os._exit(0)
        os.wait()
    """).lstrip(), SMALL)  # fmt: skip
    assert result.passed, result.detail


# --- processes that outrun a kill loop ----------------------------------------------------------------------

# Each process forks, leaves its child in a new session (out of the sandbox's process group) and exits: the
# pid a kill loop reads is gone by the time it is killed. Ends itself after 15 s whatever happens.
CHAIN = "import os, time\nend = time.monotonic() + 15\nwhile time.monotonic() < end:\n    if os.fork():\n        os._exit(0)\n    os.setsid()\n"  # fmt: skip


def _tagged(tag: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if tag in (p.info.get("cmdline") or [])]


@pytest.mark.skipif(
    sandbox_memory.cgroup_parent() is None
    or (sandbox_memory.cgroup_parent()[0] == "v1" and sandbox_memory._freezer_parent() is None),
    reason="no cgroup here that kills all at once (v2 cgroup.kill, or a v1 freezer)",
)
def test_a_fork_chain_that_left_the_process_group_dies_with_its_cgroup(monkeypatch) -> None:
    # Without bwrap (unsafe mode) no PID namespace ends the chain: only the cgroup's kill-all can.
    monkeypatch.setattr(sandbox, "isolation", lambda: {"sandbox": None, "why": "testing the cgroup alone"})
    tag = uuid.uuid4().hex
    source = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {CHAIN!r}, {tag!r}])\n"
    try:
        result = run_program(source, SandboxLimits(timeout_s=1.0, cpu_s=10, unsafe_no_sandbox=True))
        assert result.passed, result.detail  # the first link exits 0 at once
        deadline = time.monotonic() + 2
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _tagged(tag), "the fork chain outlived its cgroup"
    finally:
        for proc in _tagged(tag):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_v2_close_writes_cgroup_kill_instead_of_killing_pid_by_pid(tmp_path, monkeypatch) -> None:
    group = MemoryCgroup("v2", tmp_path)
    (tmp_path / "cgroup.kill").write_text("0")
    (tmp_path / "cgroup.procs").write_text("123\n456\n")
    monkeypatch.setattr(sandbox_memory.os, "kill", lambda pid, sig: pytest.fail(f"killed {pid} one at a time"))
    group._kill_at_once(time.monotonic() + 1)
    assert (tmp_path / "cgroup.kill").read_text() == "1"
