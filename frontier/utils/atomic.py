"""Atomic outputs: write into a temporary sibling, fsync, rename on success.

A stage killed midway then leaves either the previous complete output or nothing, never a
half-written file that Snakemake or DVC would take as done; the temporary it leaves behind is
removed by the next write of the same output (its writer's pid is no longer running).

Temporaries are created exclusively (O_CREAT|O_EXCL: "x" mode, mkdir), so a name planted where a
temporary will be made, a symbolic link to a file of the user's above all, is never opened, followed
or truncated: the write fails instead of landing elsewhere. The rename then replaces the output's
name itself, so an output that is a link or has other names (hard links) is never written through.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root` (bottom-up)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete `path`'s temporary siblings left by writers that died (killed mid-write); returns them.

    A sibling is stale when the pid in its name is no longer running: a live writer's is left alone.
    """
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` when the block exits without error.

    On error the temporary directory is removed and an existing `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        if os.path.lexists(path):
            old = _tmp_sibling(path)
            path.rename(old)  # two renames: a reader never sees a merged directory
            tmp.rename(path)
            if old.is_symlink():  # the output was a link: drop the link, never what it points to
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", *, fsync: bool = True, **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; it replaces `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_sibling(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    if "w" not in mode:
        raise ValueError(f"atomic_file writes a whole new file: mode {mode!r} must be a 'w' mode")
    created = False
    try:
        # "x": O_CREAT|O_EXCL, which fails on any existing name, a link (dangling or not) included
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
            created = True
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        if created:  # never remove a name this call did not make
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, sorted and indented (stable for diffs and DVC metrics)."""
    with atomic_file(path) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
