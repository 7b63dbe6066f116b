"""Atomic outputs: write into a temporary sibling, fsync, rename on success.

A stage killed midway then leaves either the previous complete output or nothing, never a
half-written file that Snakemake or DVC would take as done; the temporary it leaves behind is
removed by the next write of the same output (its writer's pid is no longer running).

Temporaries are created exclusively (O_CREAT|O_EXCL: "x" mode, mkdir), so a name planted where a
temporary will be made, a symbolic link to a file of the user's above all, is never opened, followed
or truncated: the write fails instead of landing elsewhere. The rename then replaces the output's
name itself, so an output that is a link or has other names (hard links) is never written through.
A file that is appended to instead (a log) is opened by open_append_nofollow: never through a link,
and only when it is a regular file with that one name, checked on the opened file itself.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

# appended to, created if missing; a link is not followed, a FIFO does not block the open, no terminal is adopted
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


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


def remove_entry(path: str | Path, expected: str | None = None) -> None:
    """Remove `path` whatever it is, never following a link: a link or file is unlinked, a real directory
    deleted with its content (shutil.rmtree refuses links, and walks none inside). With `expected` (what
    belongs there), a link found instead is reported with one warning line: it was planted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
        return
    if expected is not None and stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            log.warning("%s was a link to %s; removed the link (not its target): expected %s", path,
                        os.readlink(path), expected)  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def open_append_nofollow(path: str | Path, *, encoding: str = "utf-8", newline: str | None = None) -> IO[str]:
    """Open `path` to append text (created if missing), never writing through a planted name: OSError,
    nothing written, when it is a symbolic link (O_NOFOLLOW), not a regular file, or a file with other
    names (hard links; checked on the opened file, so no swap between check and write gets past it)."""
    try:
        fd = os.open(path, _APPEND_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OSError(
            errno.ELOOP, "a symbolic link; refusing to write through it (remove the link)", str(path)
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} names (hard links)"
        raise OSError(errno.EPERM, f"{what}; refusing to append to it (remove that name)", str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding=encoding, newline=newline)


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
            remove_entry(tmp)
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
            remove_entry(old)  # the output was a link: the link goes, never what it points to
        else:
            tmp.rename(path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        remove_entry(tmp)
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
