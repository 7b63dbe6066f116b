"""The dependency lock: what requirements/*.txt pins, what is installed, and how they differ.

run.sh installs a lock with pip's hash checking, then calls ``python -m frontier.utils.lock record LOCK``,
which writes ``<venv>/frontier-lock.json`` (flavour, file, sha256, pins). Provenance records that
marker's identity and whether the environment still equals it; tests/test_lock.py fails when it does not.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

from frontier.utils.hashing import sha256_file

MARKER = "frontier-lock.json"
# Present in every venv or the project itself, never pinned by the lock.
NOT_LOCKED = frozenset({"pip", "frontier"})
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name normalization (Foo_Bar.baz -> foo-bar-baz)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path) -> dict[str, str]:
    """{normalized name: version} of every ``name==version`` line of a pip-style lock file."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of every distribution installed in this environment's site-packages.

    Only site-packages: setuptools puts its vendored copies (with their own dist-info) on sys.path
    once imported, and those are not installed packages.
    """
    found: dict[str, str] = {}
    paths = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    for dist in importlib.metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def lock_differences(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per package where the environment and the lock disagree (empty: they are equal)."""
    out = []
    for name in sorted(set(pins) | set(installed)):
        if name in NOT_LOCKED:
            continue
        want, have = pins.get(name), installed.get(name)
        if want is None:
            out.append(f"{name}: installed {have}, not in the lock")
        elif have is None:
            out.append(f"{name}: locked {want}, not installed")
        elif want != have:
            out.append(f"{name}: locked {want}, installed {have}")
    return out


def marker_path(prefix: str | Path | None = None) -> Path:
    return Path(prefix or sys.prefix) / MARKER


def record(lock: str | Path, flavour: str, prefix: str | Path | None = None) -> Path:
    """Write the marker of the lock this environment was installed from."""
    lock = Path(lock)
    data = {"flavour": flavour, "file": lock.as_posix(), "sha256": sha256_file(lock), "pins": read_lock(lock)}
    path = marker_path(prefix)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_marker(prefix: str | Path | None = None) -> dict[str, Any] | None:
    """The marker run.sh wrote, or None when this environment was not installed from a lock."""
    path = marker_path(prefix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def lock_status() -> dict[str, Any]:
    """For provenance: which lock (file, sha256) and whether the environment still equals it."""
    marker = read_marker()
    if marker is None:
        return {"file": None, "sha256": None, "matches": False, "differences": ["not installed from a lock"]}
    diffs = lock_differences(marker.get("pins", {}), installed_versions())
    return {
        "flavour": marker.get("flavour"),
        "file": marker.get("file"),
        "sha256": marker.get("sha256"),
        "matches": not diffs,
        "differences": diffs,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m frontier.utils.lock record LOCK FLAVOUR`` | ``check``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "record":
        print(f"lock: recorded {args[1]} in {record(args[1], args[2])}")
        return 0
    if args == ["check"]:
        status = lock_status()
        for line in status["differences"]:
            print(f"lock: {line}", file=sys.stderr)
        return 0 if status["matches"] else 1
    print("usage: python -m frontier.utils.lock record LOCK FLAVOUR | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
