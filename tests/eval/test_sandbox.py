"""The sandbox against hostile completions: each attack class is tried for real and must be contained.

Classes: escape by path (write, delete, read host files), by file descriptor, by privileges (setuid,
namespaces, the old in-process guard's tricks), by spawning (fork bombs, detached children), by faking
the verdict, and by exhausting disk, processes, memory and CPU; plus the network.
"""

from __future__ import annotations

import socket
import struct
import textwrap
import time
import uuid

import psutil
import pytest

from frontier.eval import sandbox, sandbox_memory
from frontier.eval.sandbox import SandboxLimits, SandboxUnavailable, isolation, run_check, run_program
from frontier.eval.sandbox_memory import MemoryCgroup

needs_sandbox = pytest.mark.skipif(
    not isolation()["sandbox"], reason=f"no sandbox on this machine: {isolation().get('why')}"
)
FAST = SandboxLimits(timeout_s=5.0, cpu_s=3, memory_mb=512, max_processes=16, disk_mb=8)


def program(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def contained(source: str, limits: SandboxLimits = FAST) -> sandbox.ExecResult:
    """Run an attack that asserts its own success: it must fail (exit non-zero or time out)."""
    result = run_program(program(source), limits)
    assert result.status != "passed", f"attack succeeded:\n{source}"
    return result


@needs_sandbox
def test_a_benign_program_runs_and_can_use_its_work_directory() -> None:
    result = run_program(program("""
        import json, os
        assert os.getuid() == 65534 and os.getcwd() == "/work"
        with open("out.json", "w") as f:
            json.dump({"x": 1}, f)
        assert json.load(open("out.json")) == {"x": 1}
    """), FAST)  # fmt: skip
    assert result.passed, result.detail
    assert not run_program("assert 1 + 1 == 3\n", FAST).passed


# --- escape by path -------------------------------------------------------------------------------------


@needs_sandbox
def test_host_files_can_be_neither_written_nor_deleted(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    tmp_path.chmod(0o777)
    victim.chmod(0o666)  # even a world-writable host file: it is simply not there inside
    for attack in (
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
        f"open({str(victim)!r}, 'w').write('pwned')",
        f"import os; os.remove({str(victim)!r})",
        "open('../../tmp/escape.txt', 'w').write('x')",
        "open('/usr/lib/python3.11/os.py', 'a').write('# pwned')",
        "import os; os.symlink('/', '/work/root'); open('/work/root/tmp/escape.txt', 'w').write('x')",
    ):
        contained(attack)
    assert victim.read_text() == "keep me" and not (tmp_path / "new.txt").exists()


@needs_sandbox
def test_host_files_cannot_be_read(tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)
    contained(f"assert 'TOPSECRET' in open({str(secret)!r}).read()")
    contained("open('/etc/passwd').read()")
    contained("import os; assert 'root' in os.listdir('/')")  # only the runtime, /proc, /dev, /sandbox, /work


# --- escape by file descriptor or process -----------------------------------------------------------------


@needs_sandbox
def test_no_host_descriptor_or_process_is_reachable(tmp_path) -> None:
    secret = tmp_path / "held-open.txt"
    secret.write_text("TOPSECRET")
    with open(secret) as held:  # noqa: F841  (this process holds it while the sandbox runs)
        contained("""
            import os
            for fd in range(3, 1024):
                try:
                    data = os.pread(fd, 100, 0)
                except OSError:
                    continue
                assert b"TOPSECRET" not in data
            raise SystemExit(0 if False else 1)  # nothing found: the attack failed
        """)
        contained("""
            import os
            pids = [p for p in os.listdir('/proc') if p.isdigit()]
            assert len(pids) > 5, pids  # the host's processes would be listed here
        """)
    contained("import os; os.kill(1, 9); os.kill(-1, 9)")


# --- escape by privileges, or by switching a guard off ------------------------------------------------------


@needs_sandbox
@pytest.mark.parametrize(
    "attack",
    [
        "import os; os.setuid(0)",
        "import os; os.setgid(0)",
        "import ctypes; assert ctypes.CDLL(None).unshare(0x10000000 | 0x00020000) == 0; "  # new user + mount ns
        "import os; os.mkdir('/work/m'); assert ctypes.CDLL(None).mount(b'/', b'/work/m', None, 4096, None) == 0; "
        "assert os.listdir('/work/m/root')",
        "import sys; sys.addaudithook = None; import os; assert os.system('id') == 0",  # the old guard's off switch
        "import subprocess; subprocess.run(['/bin/sh', '-c', 'echo pwned > /tmp/x'], check=True)",
    ],
)
def test_privileges_cannot_be_gained(attack: str) -> None:
    contained(attack)


# --- spawning ---------------------------------------------------------------------------------------------


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if tag in (proc.info.get("cmdline") or []):
            found.append(proc)
    return found


@needs_sandbox
def test_detached_children_die_with_the_sandbox() -> None:
    tag = uuid.uuid4().hex
    result = run_program(program(f"""
        import os, sys, time
        for _ in range(3):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:  # double fork: reparented, in its own session
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", "{tag}"])
                os._exit(0)
        time.sleep(60)
    """), SandboxLimits(timeout_s=2.0, cpu_s=5, max_processes=16))  # fmt: skip
    assert result.status == "timeout"
    deadline = time.monotonic() + 5
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _tagged(tag)
    for proc in survivors:
        proc.kill()
    assert not survivors, "sandboxed processes outlived the sandbox"


@needs_sandbox
def test_fork_bomb_stops_at_the_process_limit() -> None:
    result = contained("""
        import os, time
        for _ in range(1000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
    """, SandboxLimits(timeout_s=10, cpu_s=5, max_processes=16))  # fmt: skip
    assert "Resource temporarily unavailable" in result.detail or "BlockingIOError" in result.detail


# --- exhaustion -------------------------------------------------------------------------------------------


@needs_sandbox
def test_disk_is_capped_everywhere_writable() -> None:
    for target in ("/work/big", "/big", "/dev/shm/big", "/proc/big"):
        contained(f"""
            with open({target!r}, "wb") as f:
                for _ in range(64):
                    f.write(b"x" * (1 << 20))
        """)


@needs_sandbox
def test_memory_and_cpu_are_capped() -> None:
    assert "MemoryError" in contained("x = bytearray(2 << 30)", SandboxLimits(timeout_s=10, memory_mb=256)).detail
    started = time.monotonic()
    result = contained("while True:\n    pass\n", SandboxLimits(timeout_s=60, cpu_s=1))
    assert result.status == "failed" and time.monotonic() - started < 30  # RLIMIT_CPU, not the wall clock
    assert run_program("while True:\n    pass\n", SandboxLimits(timeout_s=1.0, cpu_s=30)).status == "timeout"


# --- network ----------------------------------------------------------------------------------------------


@needs_sandbox
def test_no_network_not_even_the_hosts_loopback() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        contained(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)")
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever arrived
    contained("import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)")
    contained("import socket; socket.getaddrinfo('example.com', 80)")


# --- the verdict --------------------------------------------------------------------------------------------

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n    assert candidate((1,), (2,)) == (1, 2)\n"  # fmt: skip


def verdict(completion: str) -> str:
    return run_check(PROMPT, textwrap.indent(textwrap.dedent(completion), "    "), TEST, "add", FAST).status


@needs_sandbox
def test_correct_and_wrong_completions() -> None:
    assert verdict("return a + b\n") == "passed"
    assert verdict("return a - b\n") == "failed"
    assert verdict("return a +\n") == "failed"  # does not even compile
    loop = "    while True:\n        pass\n"
    assert run_check(PROMPT, loop, TEST, "add", SandboxLimits(timeout_s=2, cpu_s=30)).status == "timeout"
    assert run_check(PROMPT, loop, TEST, "add", SandboxLimits(timeout_s=30, cpu_s=1)).status == "failed"  # CPU cap


@needs_sandbox
@pytest.mark.parametrize(
    "forgery",
    [
        "import os\nos._exit(0)\n",  # exits 0 before any test
        "import sys\nsys.exit(0)\n",
        "print('PASS')\nimport os\nos._exit(0)\n",
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'PASS\\n')\n    except OSError:\n        pass\nos._exit(0)\n",
        "class Yes:\n    def __eq__(self, other):\n        return True\nreturn Yes()\n",  # the rigged __eq__
        "class Yes(int):\n    def __eq__(self, other):\n        return True\nreturn Yes(0)\n",  # ... as an int subclass
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\nreturn 0\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nreturn 0\n",
        "return open('/sandbox/test.py').read()\n",  # the test is not even in its sandbox
    ],
)
def test_the_verdict_cannot_be_forged(forgery: str) -> None:
    assert verdict(forgery) == "failed"


@needs_sandbox
def test_exceptions_raised_by_the_candidate_fail_it_even_where_the_test_expects_them() -> None:
    # A completion's exception never decides a verdict (test_sandbox_hostile.py: StopIteration ends a map()
    # in the test's all()), so a test that expects one cannot be passed; HumanEval's tests expect none.
    test = "def check(candidate):\n    try:\n        candidate(1, 0)\n    except ZeroDivisionError:\n        return\n    raise AssertionError('no error')\n"  # fmt: skip
    result = run_check(PROMPT, "    return a / b\n", test, "add", FAST)
    assert not result.passed and "ZeroDivisionError" in result.detail
    assert not run_check(PROMPT, "    return 0\n", test, "add", FAST).passed


# --- where no sandbox can run -------------------------------------------------------------------------------


def test_without_bubblewrap_untrusted_code_is_refused_unless_explicitly_allowed(monkeypatch, caplog) -> None:
    monkeypatch.setattr(sandbox, "isolation", lambda: {"sandbox": None, "why": "bwrap is not installed"})
    with pytest.raises(SandboxUnavailable, match="unsafe_run_without_sandbox"):
        run_check(PROMPT, "    return a + b\n", TEST, "add", FAST)
    with pytest.raises(SandboxUnavailable):
        run_program("print(1)\n", FAST)
    unsafe = SandboxLimits(timeout_s=10, cpu_s=5, unsafe_no_sandbox=True)
    with caplog.at_level("WARNING"):
        assert run_check(PROMPT, "    return a + b\n", TEST, "add", unsafe).passed
    assert "UNSAFE" in caplog.text and "WITHOUT a sandbox" in caplog.text


@pytest.fixture
def fresh_probe():
    """isolation() probed again inside the test, and again after it (nothing it cached leaks out)."""
    sandbox.isolation.cache_clear()
    yield
    sandbox.isolation.cache_clear()


def _refused(limits: SandboxLimits = FAST) -> str:
    """What a run says when the probe failed: one line, from SandboxUnavailable (never a quiet "failed")."""
    with pytest.raises(SandboxUnavailable) as refused:
        run_program("print(1)\n", limits)
    with pytest.raises(SandboxUnavailable):
        run_check(PROMPT, "    return a + b\n", TEST, "add", limits)
    assert "\n" not in str(refused.value)
    return str(refused.value)


@needs_sandbox
def test_a_seccomp_filter_the_kernel_rejects_makes_runs_refuse(monkeypatch, fresh_probe) -> None:
    # A load with no return: the kernel's checker rejects it, so bwrap exits before running anything. The probe
    # goes through the runs' own launcher, so it fails too, and runs refuse instead of failing every problem.
    broken = struct.pack("=HBBI", 0x20, 0, 0, 0)
    monkeypatch.setattr(sandbox_memory, "seccomp_filter", lambda: broken)
    assert not isolation()["sandbox"] and "seccomp" in isolation()["why"].lower()
    assert "seccomp" in _refused().lower()


@needs_sandbox
@pytest.mark.skipif(sandbox_memory.cgroup_parent() is None, reason="no memory cgroup can be made here")
def test_a_cgroup_the_sandbox_cannot_move_into_makes_runs_refuse(monkeypatch, fresh_probe) -> None:
    real = MemoryCgroup.create.__func__

    def removed(cls, limit_bytes: int) -> MemoryCgroup:
        group = real(cls, limit_bytes)
        group.close()  # its directory is gone: the move into it fails for real (ENOENT)
        return group

    monkeypatch.setattr(MemoryCgroup, "create", classmethod(removed))
    assert not isolation()["sandbox"] and "memory cgroup" in isolation()["why"]
    assert "memory cgroup" in _refused()


def test_describe_probes_nothing(monkeypatch, fresh_probe) -> None:
    sandbox_memory.cgroup_parent.cache_clear()  # as in a fresh process: nothing probed yet
    monkeypatch.setattr(sandbox_memory, "_usable", lambda *a: pytest.fail("describe() probed a cgroup"))
    monkeypatch.setattr(sandbox, "_start", lambda *a, **k: pytest.fail("describe() started a sandbox"))
    described = sandbox.describe()
    assert described["sandbox"] == "not probed yet" and "cgroup: not probed yet" in described["memory"]
    assert sandbox.isolation.cache_info().currsize == 0 and sandbox_memory.cgroup_parent.cache_info().currsize == 0
