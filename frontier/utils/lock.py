"""The dependency lock: what requirements/*.txt pins, what is installed, and how they differ.

run.sh installs a lock with pip's hash checking, then calls ``python -m frontier.utils.lock record LOCK FLAVOUR``,
which writes ``<venv>/frontier-lock.json`` (flavour, file, sha256, pins). Before every command run.sh calls
``python -m frontier.utils.lock check VENV``: the installed versions against those pins, and every installed
file against the sha256 its distribution's RECORD lists (a file missing or edited since install, a RECORD
rewritten, a file no RECORD lists anywhere in site-packages: a .pth or module dropped at its top level or
a module dropped inside an installed package, ``transformers/evil.py``). Compiled bytecode, which RECORD lists
without a hash, is checked too: a ``.pyc`` in ``__pycache__`` must be the cache of a module a RECORD hashes,
and must hold what that module compiles to (Python runs a .pyc whose header matches its source, whatever
its code). Provenance records the marker's identity and whether the environment still equals it;
tests/test_lock.py fails when it does not.

Hashing every installed file (torch alone is ~1 GB) takes seconds, so ``<venv>/frontier-verified.marshal`` keeps,
per file, the stat (size, mtime, ctime, inode) it had when last found equal to its RECORD hash; a file with
that same stat is not read again. Any write to a file changes its ctime, which no user can set back, so an
edit is always re-hashed. A .pyc is kept with the sha256 it had when found good (at install: as pip wrote
it); one that differs from it, or that appears later, is compiled from its source and compared. The cache is
only an accelerator: without it every file is hashed (and it is rebuilt), and each .pyc is taken as found.
What this guards against is drift (a package replaced, removed, edited in place); someone who can rewrite a
file, its RECORD and the cache together is not stopped by any check run from inside the venv.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import marshal
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any, NamedTuple

from frontier.utils.hashing import sha256_file

MARKER = "frontier-lock.json"
VERIFIED = "frontier-verified.marshal"
# Present in every venv or the project itself, never pinned by the lock.
NOT_LOCKED = frozenset({"pip", "frontier"})
# The editable install of the project: its files are the working tree (and its compiled extension).
NOT_VERIFIED = frozenset({"frontier"})
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_CACHE_FORMAT = 3  # 3: with the .pyc files


class Dist(NamedTuple):
    """One installed distribution: its normalized name, version, site directory and metadata directory."""

    name: str
    version: str
    site: str
    info: str


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


def site_dirs(prefix: str | Path | None = None) -> list[str]:
    """The site-packages directories of the environment at ``prefix`` (default: this one)."""
    if prefix is None:
        return sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    base = os.path.abspath(prefix)
    where = {"base": base, "platbase": base, "installed_base": base, "installed_platbase": base}
    return sorted({sysconfig.get_path("purelib", vars=where), sysconfig.get_path("platlib", vars=where)})


def _name_and_version(metadata: str) -> tuple[str | None, str | None]:
    """Name and Version from the header of a METADATA / PKG-INFO file."""
    name = version = None
    try:
        with open(metadata, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key == "Name" and name is None:
                    name = value.strip()
                elif key == "Version" and version is None:
                    version = value.strip()
    except OSError:
        pass
    return name, version


def distributions(prefix: str | Path | None = None) -> list[Dist]:
    """Every distribution installed in the site-packages of ``prefix`` (default: this environment).

    Only site-packages: setuptools puts its vendored copies (with their own dist-info) on sys.path
    once imported, and those are not installed packages.
    """
    found = []
    for site in site_dirs(prefix):
        try:
            entries = sorted(os.listdir(site))
        except OSError:
            continue
        for entry in entries:
            info = os.path.join(site, entry)
            if entry.endswith(".dist-info"):
                metadata = os.path.join(info, "METADATA")
            elif entry.endswith(".egg-info"):
                metadata = os.path.join(info, "PKG-INFO") if os.path.isdir(info) else info
            else:
                continue
            name, version = _name_and_version(metadata)
            if name:
                found.append(Dist(normalize(name), version or "?", site, info))
    return found


def installed_versions(prefix: str | Path | None = None) -> dict[str, str]:
    """{normalized name: version} of every distribution installed in this environment's site-packages."""
    found: dict[str, str] = {}
    for dist in distributions(prefix):
        found.setdefault(dist.name, dist.version)
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


def _record_hash(path: str, algorithm: str) -> str:
    """A file's digest as RECORD writes it (urlsafe base64, no padding)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_cache(prefix: Path) -> dict[str, Any]:
    """The cache (marshal: it loads 35,000 entries ~10x faster than json; a venv has one Python version)."""
    try:
        cache = marshal.loads((prefix / VERIFIED).read_bytes())
        if cache.get("format") == _CACHE_FORMAT:
            return cache
    except (OSError, ValueError, EOFError, TypeError, AttributeError):
        pass
    return {}


def _write_cache(prefix: Path, cache: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file; a planted link is never followed); a read-only venv just
    stays uncached. No fsync: a cache lost in a crash is rebuilt."""
    from frontier.utils.atomic import atomic_file  # stdlib only: fine under python -S

    try:
        with atomic_file(prefix / VERIFIED, "wb", fsync=False) as f:
            f.write(marshal.dumps(cache))
    except OSError:
        pass


def _sha256(path: str) -> str:
    return "sha256=" + _record_hash(path, "sha256")


def _pyc_compiles_from(pyc: str, source: str) -> bool:
    """Whether a .pyc holds the code its source compiles to (code objects compare by their bytecode, constants,
    names and line tables, not by the file name or the .pyc's header)."""
    name = os.path.basename(pyc)
    optimize = int(name[-5]) if name[-10:-5] == ".opt-" and name[-5].isdigit() else 0
    try:
        with open(pyc, "rb") as f:
            code = marshal.loads(f.read()[16:])
        with open(source, "rb") as f:
            return code == compile(f.read(), source, "exec", dont_inherit=True, optimize=optimize)
    except (OSError, ValueError, EOFError, TypeError, SyntaxError, MemoryError):
        return False


def _own_pth(path: str) -> bool:
    """The project's own .pth (frontier.utils.params_guard's), holding exactly the line run.sh wrote."""
    from frontier.utils.params_guard import PTH_LINE, PTH_NAME

    if os.path.basename(path) != PTH_NAME:
        return False
    try:
        return Path(path).read_text(encoding="utf-8") == PTH_LINE
    except (OSError, UnicodeDecodeError):
        return False


def _unlisted(root: str, site: str, top: str, listed: set[str], pycs: dict[str, str]) -> list[str]:
    """The files under ``site/top`` (an installed package's directory, relative to ``root``) that no RECORD lists.

    A file in a __pycache__ is not reported when it is the .pyc of a module some RECORD lists: it goes into
    ``pycs`` ({.pyc: its source}, relative to ``root``) to be checked against that source.
    """
    out = []
    todo = [f"{site}/{top}"]
    while todo:
        directory = todo.pop()
        try:
            entries = os.scandir(f"{root}/{directory}")
        except OSError:
            continue
        prefix, cache = f"{directory}/", directory.endswith("/__pycache__")
        with entries:
            for entry in entries:
                rel = prefix + entry.name
                if rel in listed and not cache:  # (most files: one lookup, as this runs ~55,000 times)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    todo.append(rel)
                elif cache and entry.name.endswith(".pyc"):
                    source = f"{directory[:-12]}/{entry.name.split('.', 1)[0]}.py"
                    if source in listed:
                        pycs[rel] = source
                    elif rel not in listed:
                        out.append(rel)
                elif rel not in listed:
                    out.append(rel)
    return sorted(out)


def file_differences(prefix: str | Path | None = None, *, fresh: bool = False, per_package: int = 5) -> list[str]:
    """One line per installed file that differs from its distribution's RECORD (empty: none does).

    At most ``per_package`` lines a package (or a top-level directory's unlisted files), then a count. A file
    two distributions install (py-cpuinfo and py-cpuinfo2 both write cpuinfo/) may equal either's hash. Not
    hashed from RECORD: files it lists without a hash (RECORD itself, REQUESTED) and the editable project
    (NOT_VERIFIED); the .pyc files are held to their sources instead (the module docstring). ``fresh`` takes
    each RECORD's digest, and each .pyc, anew as the one to expect (at install time: ``record``); otherwise a
    RECORD that differs from the digest taken then is reported.
    """
    root = Path(prefix or sys.prefix).absolute()
    base = str(root)
    old = _read_cache(root)
    old_files, old_records = old.get("files", {}), {} if fresh else old.get("records", {})
    records = dict(old_records)
    owned: set[tuple[str, str]] = set()  # (site dir, top-level name) some RECORD installed
    listed: set[str] = set()  # every file (relative to the venv) some RECORD lists, hashed or not
    expected: dict[str, list[str]] = {}  # file (relative to the venv) -> the "sha256=..." its RECORDs list
    owner: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for dist in distributions(root):
        label = f"{dist.name} {dist.version}"
        mine = problems.setdefault(label, [])
        if dist.name in seen:
            mine.append(f"{dist.name}: installed twice ({seen[dist.name]} and {dist.version})")
        seen.setdefault(dist.name, dist.version)
        owned.add((dist.site, os.path.basename(dist.info)))
        record = os.path.join(dist.info, "RECORD")
        try:
            text = Path(record).read_bytes()
        except OSError:
            mine.append(f"{label}: no RECORD, its files cannot be verified")
            continue
        verify = dist.name not in NOT_VERIFIED
        rel_record = os.path.relpath(record, base)
        digest = hashlib.sha256(text).hexdigest()
        if records.setdefault(rel_record, digest) != digest and verify:
            mine.append(f"{label}: {rel_record} rewritten since install")
        site = os.path.relpath(dist.site, base)
        for row in csv.reader(text.decode("utf-8", "replace").splitlines()):
            name = row[0] if row else ""
            if not name:
                continue
            # (string joins: this loop runs once a file, ~55,000 times for the cpu lock)
            rel = os.path.normpath(os.path.join(site, name)) if ".." in name or name[0] == "/" else f"{site}/{name}"
            listed.add(rel)
            top = name.split("/", 1)[0]
            if top != "..":
                owned.add((dist.site, top))
            if not verify or len(row) < 2 or "=" not in row[1] or name.endswith(".pyc"):
                continue
            expected.setdefault(rel, []).append(row[1])
            owner.setdefault(rel, label)
    files: dict[str, list[Any]] = {}
    for rel, hashes in expected.items():
        path = f"{base}/{rel}"
        try:
            key: list[Any] = _stat_key(os.stat(path))
        except OSError:
            problems[owner[rel]].append(f"{owner[rel]}: {rel} missing")
            continue
        cached = old_files.get(rel)
        if cached and cached[:-1] == key and cached[-1] in hashes:
            files[rel] = cached
            continue
        found = {}
        for want in hashes:
            algorithm, _, value = want.partition("=")
            try:
                found[algorithm] = found.get(algorithm) or _record_hash(path, algorithm)
            except (OSError, ValueError):
                continue
            if found[algorithm] == value:
                files[rel] = [*key, want]
                break
        else:
            problems[owner[rel]].append(f"{owner[rel]}: {rel} changed")
    unlisted: list[str] = []
    pycs: dict[str, str] = {}
    for site in site_dirs(root):
        site_rel = os.path.relpath(site, root)
        try:
            entries = sorted(os.scandir(site), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name == "__pycache__":
                continue  # site-packages' own: the caches of its top-level modules (below, as unlisted files)
            if (site, entry.name) not in owned:
                if not _own_pth(entry.path):
                    unlisted.append(f"{site_rel}/{entry.name}: installed by no package")
            elif entry.is_dir(follow_symlinks=False):
                lines = [
                    f"{rel}: installed by no package" for rel in _unlisted(base, site_rel, entry.name, listed, pycs)
                ]
                unlisted += lines[:per_package]
                if len(lines) > per_package:
                    unlisted.append(
                        f"{site_rel}/{entry.name}: and {len(lines) - per_package} more files no package installed"
                    )
        cache_dir = f"{site_rel}/__pycache__"
        for rel in (
            _unlisted(base, site_rel, "__pycache__", listed, pycs) if os.path.isdir(f"{base}/{cache_dir}") else ()
        ):
            unlisted.append(f"{rel}: installed by no package")
    # A .pyc: as found when nothing was cached (at install, or the cache lost); otherwise the sha256 it had when
    # last found good, else (a .pyc written since, or rewritten) what its source compiles to.
    for rel, source in pycs.items():
        if source not in expected:
            continue  # the editable project's, or one whose RECORD gives its source no hash
        path = f"{base}/{rel}"
        try:
            key = _stat_key(os.stat(path))
        except OSError:
            continue  # Python compiles the source anew
        cached = old_files.get(rel)
        if cached and cached[:-1] == key:
            files[rel] = cached
            continue
        try:
            digest = _sha256(path)
        except OSError:
            continue
        if fresh or not old or (cached and cached[-1] == digest) or _pyc_compiles_from(path, f"{base}/{source}"):
            files[rel] = [*key, digest]
        else:
            problems[owner[source]].append(f"{owner[source]}: {rel} changed (not what its source compiles to)")
    out = []
    for label, lines in problems.items():
        out += lines[:per_package]
        if len(lines) > per_package:
            out.append(f"{label}: and {len(lines) - per_package} more files missing or changed")
    out += unlisted
    if files != old_files or records != old_records:
        _write_cache(root, {"format": _CACHE_FORMAT, "files": files, "records": records})
    return out


def marker_path(prefix: str | Path | None = None) -> Path:
    return Path(prefix or sys.prefix) / MARKER


def record(lock: str | Path, flavour: str, prefix: str | Path | None = None) -> Path:
    """Write the marker of the lock this environment was installed from, and hash every installed file."""
    lock = Path(lock)
    data = {"flavour": flavour, "file": lock.as_posix(), "sha256": sha256_file(lock), "pins": read_lock(lock)}
    path = marker_path(prefix)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    file_differences(prefix, fresh=True)
    return path


def read_marker(prefix: str | Path | None = None) -> dict[str, Any] | None:
    """The marker run.sh wrote, or None when this environment was not installed from a lock."""
    path = marker_path(prefix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def lock_status(prefix: str | Path | None = None, *, files: bool = False) -> dict[str, Any]:
    """For provenance: which lock (file, sha256) and whether the environment still equals it.

    Versions only unless ``files`` (each installed file against its RECORD too: ~1 s, which run.sh spends
    once before every command, so provenance, written by every stage, does not by default).
    """
    marker = read_marker(prefix)
    if marker is None:
        return {"file": None, "sha256": None, "matches": False, "differences": ["not installed from a lock"]}
    diffs = lock_differences(marker.get("pins", {}), installed_versions(prefix))
    if files:
        diffs += file_differences(prefix)
    return {
        "flavour": marker.get("flavour"),
        "file": marker.get("file"),
        "sha256": marker.get("sha256"),
        "matches": not diffs,
        "differences": diffs,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m frontier.utils.lock record LOCK FLAVOUR [PREFIX]`` | ``check [PREFIX]``.

    PREFIX (default: the running environment) lets run.sh check a venv with ``python -S``, before any
    of its site-packages' code (a .pth file) has run.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) in (3, 4) and args[0] == "record":
        print(f"lock: recorded {args[1]} in {record(args[1], args[2], *args[3:])}")
        return 0
    if args[:1] == ["check"] and len(args) <= 2:
        status = lock_status(*args[1:], files=True)
        for line in status["differences"]:
            print(f"lock: {line}", file=sys.stderr)
        return 0 if status["matches"] else 1
    print("usage: python -m frontier.utils.lock record LOCK FLAVOUR [PREFIX] | check [PREFIX]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
