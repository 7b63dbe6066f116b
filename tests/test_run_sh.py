"""run.sh in a hostile world: a venv that drifted from the lock is refused, and a lock pip rejects never costs
the working venv. Each test runs the real run.sh and frontier/utils/lock.py in a tiny copy of the repository
whose lock pins one hand-made pure-Python wheel (tinypkg), installed from a local folder: no network.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (sys.version_info[:2] == (3, 11) and platform.system() == "Linux" and platform.machine() == "x86_64"),
    reason="run.sh installs the lock only on CPython 3.11 on Linux x86-64",
)
# site-packages, relative to the venv (as run.sh's messages name files)
SITE = Path(sysconfig.get_path("purelib", vars={"base": "/v", "platbase": "/v"})).relative_to("/v")
PYTHON = getattr(sys, "_base_executable", sys.executable)  # not this venv's: run.sh makes its own
PROBE = "import tinypkg, pathlib; pathlib.Path('ran').write_text(tinypkg.VERSION)"

# The tiny repository's build backend (PEP 660 editable install of its `frontier`); the tests build tinypkg
# wheels with its write_wheel too.
BACKEND = """
import base64, hashlib, os, zipfile


def write_wheel(directory, name, version, files):
    files = {**files, f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(text.encode())}\\n"
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, wheel), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}-{version}.dist-info/RECORD", record + f"{name}-{version}.dist-info/RECORD,,\\n")
    return wheel


def get_requires_for_build_editable(config_settings=None):
    return []


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    # named as setuptools names it: sorted before frontier-params-guard.pth, which imports frontier
    return write_wheel(wheel_directory, "frontier", "0.0.0", {"__editable__.frontier-0.0.0.pth": here + "\\n"})
"""


def run_sh_env(repo: Path, **env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FRONTIER_", "PIP_", "VIRTUAL_ENV"))}
    return environ | {"PYTHON": PYTHON, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(repo.parent / "wheels"),
                      "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1", **env}  # fmt: skip


def run_sh(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = run_sh_env(repo, **env)
    return subprocess.run(["bash", "run.sh", *args], cwd=repo, env=environ, capture_output=True, text=True, timeout=300)


def lock_text(wheels: Path, version: str, tamper: bool = False) -> str:
    """A lock pinning tinypkg (and setuptools, which a 3.11 venv comes with) with their hashes."""
    from frontier.utils.hashing import sha256_file

    digest = sha256_file(wheels / f"tinypkg-{version}-py3-none-any.whl")
    if tamper:
        digest = digest[:-4] + ("0000" if not digest.endswith("0000") else "1111")
    lines = [f"tinypkg=={version} \\\n    --hash=sha256:{digest}"]
    bundled = (wheels / "setuptools-version").read_text()
    if bundled:  # already installed in a new venv: pip checks no hash, but --require-hashes wants one
        lines.append(f"setuptools=={bundled} \\\n    --hash=sha256:{'0' * 64}")
    return "# tiny lock\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repository with run.sh, frontier.utils.lock (and the params guard run.sh arms) and its venv installed
    from a one-package lock."""
    top = tmp_path_factory.mktemp("tiny")
    repo, wheels = top / "repo", top / "wheels"
    (repo / "frontier" / "utils").mkdir(parents=True)
    (repo / "csrc" / "cuda").mkdir(parents=True)
    (repo / "requirements").mkdir()
    wheels.mkdir()
    shutil.copy(REPO / "run.sh", repo / "run.sh")
    for name in ("lock.py", "hashing.py", "params_guard.py", "atomic.py"):
        shutil.copy(REPO / "frontier" / "utils" / name, repo / "frontier" / "utils" / name)
    for name in ("frontier/__init__.py", "frontier/utils/__init__.py", "csrc/x.cpp", "csrc/x.h", "csrc/cuda/x.cu"):
        (repo / name).write_text("")
    (repo / "setup.py").write_text("")
    (repo / "_tiny_backend.py").write_text(BACKEND)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "_tiny_backend"\nbackend-path = ["."]\n'
    )
    spec = importlib.util.spec_from_file_location("_tiny_backend", repo / "_tiny_backend.py")
    assert spec and spec.loader
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    # the venv run.sh would make (Python 3.11's comes with setuptools, which the lock must then pin)
    subprocess.run([PYTHON, "-m", "venv", str(repo / ".venv")], check=True)
    probe = "import importlib.metadata as m\ntry: print(m.version('setuptools'))\nexcept Exception: print()"
    setuptools = venv_python(repo, "-c", probe).stdout.strip()
    (wheels / "setuptools-version").write_text(setuptools)
    for version in ("1.0", "2.0"):
        backend.write_wheel(str(wheels), "tinypkg", version, {"tinypkg/__init__.py": f"VERSION = {version!r}\n"})
    for name in ("cpu.txt", "cpu-build.txt"):
        (repo / "requirements" / name).write_text(lock_text(wheels, "1.0"))
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert (repo / "ran").read_text() == "1.0"
    (repo / "ran").unlink()
    return repo


@pytest.fixture
def repo(installed: Path, tmp_path: Path) -> Path:
    """A copy of the installed tiny repository (its venv with it) for one test to attack."""
    copy = tmp_path / "repo"
    shutil.copytree(installed, copy, symlinks=True)
    (tmp_path / "wheels").symlink_to(installed.parent / "wheels")
    return copy


def venv_python(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / ".venv/bin/python"), *args], capture_output=True, text=True, cwd=repo)


def refused(repo: Path, *expected: str) -> str:
    """run.sh refuses to run the command, names each expected difference, and gives the repair."""
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode != 0, result.stderr
    assert not (repo / "ran").exists(), "the command ran in a drifted venv"
    for line in expected:
        assert line in result.stderr, result.stderr
    assert "FRONTIER_REINSTALL=1 bash run.sh python -c" in result.stderr
    return result.stderr


def test_an_intact_venv_runs_the_command(repo: Path) -> None:
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert (repo / "ran").read_text() == "1.0" and result.stderr == ""


def test_a_venv_named_by_absolute_path_is_the_one_the_command_runs_in(repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "venv"
    result = run_sh(repo, "python", "-c", "import sys; print(sys.prefix)", FRONTIER_VENV=str(elsewhere))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(elsewhere)


def test_a_package_replaced_by_another_version_is_refused(repo: Path) -> None:
    pip = venv_python(
        repo,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        str(repo.parent / "wheels" / "tinypkg-2.0-py3-none-any.whl"),
    )
    assert pip.returncode == 0, pip.stderr
    refused(repo, "tinypkg: locked 1.0, installed 2.0")


def test_a_removed_package_is_refused(repo: Path) -> None:
    pip = venv_python(repo, "-m", "pip", "uninstall", "-q", "-y", "tinypkg")
    assert pip.returncode == 0, pip.stderr
    refused(repo, "tinypkg: locked 1.0, not installed")


def test_a_package_whose_code_was_deleted_is_refused(repo: Path) -> None:
    shutil.rmtree(repo / ".venv" / SITE / "tinypkg")
    refused(repo, f"tinypkg 1.0: {SITE}/tinypkg/__init__.py missing")


def test_an_edited_installed_file_is_refused_even_with_its_size_and_mtime_restored(repo: Path) -> None:
    module = repo / ".venv" / SITE / "tinypkg" / "__init__.py"
    before = module.stat()
    module.write_text(module.read_text().replace("1.0", "6.6"))  # same size
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    pip_file = next((repo / ".venv" / SITE / "pip").glob("__init__.py"))
    pip_file.write_text(pip_file.read_text() + "\n# patched\n")
    refused(repo, f"tinypkg 1.0: {SITE}/tinypkg/__init__.py changed", f"{SITE}/pip/__init__.py changed")


def test_a_file_dropped_into_site_packages_is_refused(repo: Path) -> None:
    (repo / ".venv" / SITE / "zz-evil.pth").write_text("import os\n")
    refused(repo, f"{SITE}/zz-evil.pth: installed by no package")


@pytest.mark.slow  # a new venv (ensurepip): ~5 s
def test_a_tampered_hash_in_the_lock_leaves_the_working_venv_as_it_was(repo: Path) -> None:
    def snapshot() -> dict[str, bytes]:
        venv = repo / ".venv"
        return {
            str(p.relative_to(venv)): p.read_bytes()
            for p in sorted(venv.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }

    before = snapshot()
    good = (repo / "requirements" / "cpu.txt").read_text()
    for name in ("cpu.txt", "cpu-build.txt"):
        (repo / "requirements" / name).write_text(lock_text(repo.parent / "wheels", "1.0", tamper=True))
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode != 0 and not (repo / "ran").exists()
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in result.stderr, result.stderr
    assert "failed" in result.stderr.splitlines()[-1] and ".venv is unchanged" in result.stderr.splitlines()[-1]
    assert snapshot() == before
    assert not list(repo.glob(".venv.old-*")), "a temporary venv was left behind"
    assert venv_python(repo, "-c", "import tinypkg").returncode == 0
    for name in ("cpu.txt", "cpu-build.txt"):
        (repo / "requirements" / name).write_text(good)
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert (repo / "ran").read_text() == "1.0"


@pytest.mark.slow  # a new venv (ensurepip): ~5 s
def test_a_changed_lock_builds_a_new_venv_and_swaps_it_in(repo: Path) -> None:
    (repo / "requirements" / "cpu.txt").write_text(lock_text(repo.parent / "wheels", "2.0"))
    (repo / "requirements" / "cpu-build.txt").write_text(lock_text(repo.parent / "wheels", "2.0"))
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert (repo / "ran").read_text() == "2.0"
    assert not list(repo.glob(".venv.old-*")) and (repo / ".venv" / "bin" / "pip").read_text().startswith(
        f"#!{repo}/.venv/"
    )


def test_an_interrupted_rebuild_is_undone(repo: Path) -> None:
    (repo / ".venv").rename(repo / ".venv.old-999999999")  # a pid no process has: the rebuild was killed
    (repo / ".venv" / "bin").mkdir(parents=True)  # the new venv it had begun (no install marker)
    result = run_sh(repo, "python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert "restoring .venv" in result.stderr and (repo / "ran").read_text() == "1.0"
    assert not list(repo.glob(".venv.old-*"))


def test_an_interrupted_rebuild_is_undone_though_its_pid_now_names_another_process(repo: Path) -> None:
    # The pid in the name is no evidence of a running rebuild (pids are reused): the lock is.
    with subprocess.Popen(["sleep", "60"]) as unrelated:
        try:
            (repo / ".venv").rename(repo / f".venv.old-{unrelated.pid}")
            (repo / ".venv" / "bin").mkdir(parents=True)
            result = run_sh(repo, "python", "-c", PROBE)
        finally:
            unrelated.kill()
    assert result.returncode == 0, result.stderr
    assert "restoring .venv" in result.stderr and (repo / "ran").read_text() == "1.0"
    assert not list(repo.glob(".venv.old-*"))


def test_a_module_dropped_inside_an_installed_package_is_refused(repo: Path) -> None:
    (repo / ".venv" / SITE / "tinypkg" / "evil.py").write_text("import os\n")
    refused(repo, f"{SITE}/tinypkg/evil.py: installed by no package")


def test_an_edited_pyc_whose_header_still_matches_its_source_is_refused(repo: Path) -> None:
    compiled = venv_python(
        repo, "-c", "import tinypkg, importlib.util as u; print(u.cache_from_source(tinypkg.__file__))"
    )
    assert compiled.returncode == 0, compiled.stderr
    pyc = Path(compiled.stdout.strip())
    header = pyc.read_bytes()[:16]  # the source's mtime and size: Python will run this .pyc for it
    code = compile("import pathlib; pathlib.Path('ran').write_text('pwned')\nVERSION = '1.0'\n", "x", "exec")
    pyc.write_bytes(header + marshal.dumps(code))
    refused(repo, f"{pyc.relative_to(repo / '.venv')} changed")


@pytest.mark.slow  # a new venv (ensurepip): ~5 s
def test_two_run_sh_started_together_on_a_fresh_clone_install_once_and_both_run(repo: Path) -> None:
    shutil.rmtree(repo / ".venv")
    procs = [
        subprocess.Popen(
            ["bash", "run.sh", "python", "-c", PROBE.replace("'ran'", f"'ran{i}'")],
            cwd=repo,
            env=run_sh_env(repo),
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (1, 2)
    ]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    for proc, stderr in zip(procs, errors, strict=True):
        assert proc.returncode == 0, stderr
    assert [(repo / f"ran{i}").read_text() for i in (1, 2)] == ["1.0", "1.0"]
    assert sum("installing Frontier into .venv" in stderr for stderr in errors) == 1, errors
    assert venv_python(repo, "-c", "import tinypkg").returncode == 0
