"""The lock: complete, hash-pinned, consistent, and the environment running these tests equals it."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import marshal
import os
import py_compile
import re
import sysconfig
from pathlib import Path

import pytest
import tomllib

from frontier.utils import lock as lock_module
from frontier.utils.hashing import sha256_file
from frontier.utils.lock import (
    file_differences,
    installed_versions,
    lock_differences,
    normalize,
    read_lock,
    read_marker,
)
from frontier.utils.params_guard import PTH_LINE, PTH_NAME

REPO = Path(__file__).resolve().parents[1]
LOCKS = ("cpu", "cuda")


def test_this_environment_equals_its_lock() -> None:
    import setuptools  # noqa: F401  (it puts its vendored packages on sys.path: they are not installed ones)

    marker = read_marker()
    assert marker is not None, "this environment was not installed from a lock: install with `bash run.sh`"
    lock = REPO / marker["file"]
    assert lock.is_file(), f"{marker['file']} (recorded at install) is not in the repository"
    assert sha256_file(lock) == marker["sha256"], f"{marker['file']} changed since install: rerun `bash run.sh`"
    diffs = lock_differences(read_lock(lock), installed_versions())
    assert not diffs, "installed packages differ from the lock:\n" + "\n".join(diffs)
    diffs = file_differences()
    assert not diffs, "installed files differ from their RECORD:\n" + "\n".join(diffs)


@pytest.mark.parametrize("flavour", LOCKS)
def test_every_pin_is_exact_and_hashed(flavour: str) -> None:
    text = (REPO / "requirements" / f"{flavour}.txt").read_text()
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])  # one entry per requirement (after the header)
    assert len(entries) > 100
    for entry in entries:
        head = entry.split()[0]
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[^=\s]+", head), f"{flavour}.txt: {head} is not an exact pin"
        assert "--hash=sha256:" in entry, f"{flavour}.txt: {head} has no hash"


@pytest.mark.parametrize("flavour", LOCKS)
def test_the_build_lock_is_the_locks_own_subset(flavour: str) -> None:
    full = read_lock(REPO / "requirements" / f"{flavour}.txt")
    build = read_lock(REPO / "requirements" / f"{flavour}-build.txt")
    assert {"torch", "setuptools", "wheel", "ninja", "pybind11"} <= set(build)
    for name, version in build.items():
        assert full.get(name) == version, f"{flavour}-build.txt pins {name}=={version}, {flavour}.txt {full.get(name)}"


@pytest.mark.parametrize("flavour", LOCKS)
def test_every_declared_dependency_is_locked(flavour: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["dev"] + extras["trackers"]
    pins = read_lock(REPO / "requirements" / f"{flavour}.txt")
    for requirement in declared:
        name = normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
        assert name in pins, f"{requirement} (pyproject.toml) is missing from {flavour}.txt: run requirements/lock.sh"


def test_the_cpu_lock_takes_the_cpu_build_and_the_cuda_lock_the_cuda_build() -> None:
    cpu, cuda = (read_lock(REPO / "requirements" / f"{f}.txt") for f in LOCKS)
    assert cpu["torch"].endswith("+cpu") and not any(name.startswith("nvidia-cu") for name in cpu)
    assert "+" not in cuda["torch"] and "nvidia-cudnn-cu13" in cuda
    # the libraries that define what a model computes are the same in both
    for name in ("transformers", "tokenizers", "peft", "deepspeed", "safetensors", "numpy"):
        assert cpu[name] == cuda[name], name


def test_differences_name_each_package_and_direction() -> None:
    pins = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2"}
    installed = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "rich": "14.0", "pip": "23.2", "frontier": "0.1"}
    assert lock_differences(pins, installed) == [
        "peft: locked 0.21.2, not installed",
        "rich: installed 14.0, not in the lock",
        "transformers: locked 5.24.0, installed 5.25.0",
    ]
    assert lock_differences(pins, {**pins, "pip": "1"}) == []


def test_read_lock_normalizes_names_and_ignores_hashes_and_comments(tmp_path: Path) -> None:
    lock = tmp_path / "x.txt"
    lock.write_text(
        "# via something==1.0\n"
        "Typing_Extensions==4.16.0 \\\n    --hash=sha256:ab\n"
        "nvidia-ml-py==13.615.71 ; sys_platform == 'linux' \\\n    --hash=sha256:cd\n"
    )
    assert read_lock(lock) == {"typing-extensions": "4.16.0", "nvidia-ml-py": "13.615.71"}


def _install(site: Path, name: str, files: dict[str, str]) -> None:
    """A hand-installed distribution: its files and a dist-info whose RECORD hashes them (as pip writes it)."""
    info = f"{name}-1.0.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"}
    rows = [f"{info}/RECORD,,", f"{name}/__pycache__/x.cpython-311.pyc,,"]
    for path, text in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(text)}")
    (site / info / "RECORD").write_text("\n".join(rows) + "\n")


def test_file_differences_name_each_edited_missing_or_unowned_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Path(sysconfig.get_path("purelib", vars={"base": str(tmp_path), "platbase": str(tmp_path)}))
    rel = site.relative_to(tmp_path)
    _install(site, "alpha", {"alpha/__init__.py": "A = 1\n", "alpha/data.txt": "x"})
    _install(site, "beta", {"alpha/__init__.py": "A = 2\n"})  # two packages write one file: either hash will do
    (site / PTH_NAME).write_text(PTH_LINE)  # ours: the params guard run.sh arms
    assert file_differences(tmp_path, fresh=True) == []

    hashed: list[str] = []
    real = lock_module._record_hash
    monkeypatch.setattr(
        lock_module, "_record_hash", lambda path, algorithm: hashed.append(path) or real(path, algorithm)
    )
    assert file_differences(tmp_path) == [] and hashed == []  # unchanged stat: nothing re-read

    module = site / "alpha" / "__init__.py"
    before = module.stat()
    module.write_text("A = 3\n")  # same size, and the mtime put back: the ctime still moved
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    (site / "alpha" / "data.txt").unlink()
    (site / "evil.pth").write_text("import os\n")
    (site / "frontier-evil.pth").write_text("import os\n")
    (site / PTH_NAME).write_text(PTH_LINE + "import os\n")  # our name, other content
    assert file_differences(tmp_path) == [
        f"alpha 1.0: {rel}/alpha/__init__.py changed",
        f"alpha 1.0: {rel}/alpha/data.txt missing",
        f"{rel}/evil.pth: installed by no package",
        f"{rel}/frontier-evil.pth: installed by no package",
        f"{rel}/{PTH_NAME}: installed by no package",
    ]
    record = site / "beta-1.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "beta/new.py,,\n")
    assert f"beta 1.0: {rel}/beta-1.0.dist-info/RECORD rewritten since install" in file_differences(tmp_path)


def _site(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def test_files_dropped_inside_an_installed_package_are_reported(tmp_path: Path) -> None:
    site = _site(tmp_path)
    rel = site.relative_to(tmp_path)
    _install(site, "alpha", {"alpha/__init__.py": "A = 1\n", "alpha/sub/__init__.py": ""})
    assert file_differences(tmp_path, fresh=True) == []
    (site / "alpha" / "evil.py").write_text("import os\n")
    (site / "alpha" / "sub" / "deeper").mkdir()
    (site / "alpha" / "sub" / "deeper" / "x.so").write_bytes(b"\x7fELF")
    (site / "alpha-1.0.dist-info" / "entry_points.txt").write_text("[console_scripts]\nx = os:system\n")
    assert file_differences(tmp_path) == [
        f"{rel}/alpha/evil.py: installed by no package",
        f"{rel}/alpha/sub/deeper/x.so: installed by no package",
        f"{rel}/alpha-1.0.dist-info/entry_points.txt: installed by no package",
    ]
    for i in range(7):
        (site / "alpha" / f"m{i}.py").write_text("")
    lines = file_differences(tmp_path, per_package=2)
    assert lines[1:3] == [
        f"{rel}/alpha/m0.py: installed by no package",
        f"{rel}/alpha: and 7 more files no package installed",
    ]


def test_a_pyc_is_held_to_what_its_source_compiles_to(tmp_path: Path) -> None:
    site = _site(tmp_path)
    rel = site.relative_to(tmp_path)
    _install(site, "alpha", {"alpha/__init__.py": "A = 1\n"})
    source = site / "alpha" / "__init__.py"
    pyc = Path(importlib.util.cache_from_source(str(source)))
    py_compile.compile(str(source), cfile=str(pyc), doraise=True)  # as pip does at install
    assert file_differences(tmp_path, fresh=True) == []

    header = pyc.read_bytes()[:16]  # the source's mtime and size: Python runs this .pyc in its place
    pyc.write_bytes(header + marshal.dumps(compile("import os; A = 1\n", "x", "exec")))
    assert file_differences(tmp_path) == [
        f"alpha 1.0: {pyc.relative_to(tmp_path)} changed (not what its source compiles to)"
    ]
    pyc.unlink()  # Python compiles the source again: the new .pyc is what the source compiles to
    assert file_differences(tmp_path) == []
    py_compile.compile(str(source), cfile=str(pyc), doraise=True)
    optimized = Path(importlib.util.cache_from_source(str(source), optimization=1))
    py_compile.compile(str(source), cfile=str(optimized), doraise=True, optimize=1)  # python -O's
    assert file_differences(tmp_path) == []

    orphan = pyc.with_name("gone.cpython-311.pyc")  # the bytecode of a module no package installed
    orphan.write_bytes(pyc.read_bytes())
    assert file_differences(tmp_path) == [f"{orphan.relative_to(tmp_path)}: installed by no package"]
    assert str(rel) in str(orphan.relative_to(tmp_path))


def test_the_cache_is_written_through_no_planted_link_and_leaves_no_temporary(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    site = _site(prefix)
    _install(site, "alpha", {"alpha/__init__.py": "A = 1\n"})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (prefix / f"{lock_module.VERIFIED}.{os.getpid()}.tmp").symlink_to(victim)  # the old, predictable name
    stale = prefix / f".{lock_module.VERIFIED}.tmp-999999999-0badcafe"  # a writer killed mid-write
    stale.write_bytes(b"half")
    assert file_differences(prefix, fresh=True) == []
    assert victim.read_text() == "precious\n"
    assert not stale.exists() and lock_module._read_cache(prefix)["files"]


def test_the_params_guard_pth_is_written_through_no_planted_link(tmp_path: Path) -> None:
    from frontier.utils.params_guard import install

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / PTH_NAME).symlink_to(victim)
    path = install(site)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == PTH_LINE
