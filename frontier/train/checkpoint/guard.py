"""The checkpoints directory against a hostile world: no write follows a link or leaves the directory.

Anyone who can write into ``checkpoints_dir`` (another job of the same user, a copied directory, a
careless script) can plant names the run writes to: a ``.lock`` symlink to ``~/.bashrc`` (opened,
truncated and rewritten), a ``logs`` or ``archived`` symlink to a directory elsewhere (every log and
archived checkpoint written there), a ``.step_N.tmp`` symlink (the save fails at that step on every
rerun), a hard link from ``logs/train.csv`` to a file of the user's (truncated in place). The rules:

- the lock is opened without following links, and must be a plain file with one name; a planted
  link or hard link is replaced by a fresh file (the link removed, never its target);
- a directory the run writes into (``logs``, ``archived``, a save's temporary directory) is a real
  directory under the store's root: a planted link there is removed (again: the link, never its
  target) and the work goes on; anything else in the way is a CheckpointError naming the path;
- the run's own log writes check at the write itself, so a name planted after start-up is caught
  too: whole files are replaced through utils.atomic.atomic_file, appends (train.csv, val.csv,
  alerts.jsonl) go through utils.atomic.open_append_nofollow, which refuses a link, a special file
  or a hard-linked file (nothing written);
- for what other libraries open by name inside ``logs/`` (TensorBoard, MLflow's file store, the
  profiler's traces), start-up removes links there and gives hard-linked files a copy of their own.

Each replaced link is reported with one warning line naming it and what was expected instead.

Content is checked too, since a manifest proves only that the files are the ones written (or rewritten
along with it): what DeepSpeed loaded against the model before a step runs on it (loaded_state_problem).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any

import torch

from frontier.errors import CheckpointError
from frontier.train.checkpoint.engine_io import local_state_finite, optimizer_chain
from frontier.utils.atomic import remove_entry

log = logging.getLogger("frontier.train")

_HELD: dict[str, int] = {}  # lock file -> fd: the checkpoint directories this process holds
# no link is followed, a FIFO or device planted as the lock does not block the open, no terminal is adopted
_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _describe(path: Path) -> str:
    try:
        return f"a link to {os.readlink(path)}"
    except OSError:
        return "not a plain file or directory"


def drop_planted_link(path: Path, expected: str) -> bool:
    """Unlink `path` if it is a symbolic link (dangling or not), with one warning line; True if it was."""
    if not path.is_symlink():
        return False
    remove_entry(path, expected)
    return True


def check_inside(path: Path, root: Path) -> None:
    """CheckpointError unless `path`, every link resolved, lies under the (resolved) `root`."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise CheckpointError(
            f"{path} resolves to {real}, outside the checkpoints directory {base}; expected a directory inside it "
            "(remove the link or the directory in the way)"
        )


def real_dir(path: Path, root: Path, what: str) -> Path:
    """Make `path` a real directory inside `root` (created if missing): a planted link there is removed;
    a file in the way, or a path that leaves `root` through a link above it, is a CheckpointError."""
    drop_planted_link(path, f"{what}, a directory inside {root}")
    try:
        path.mkdir(parents=True, exist_ok=True)  # mkdir never follows its last component
    except FileExistsError:
        raise CheckpointError(f"{path} is a file; expected {what}, a directory (move the file away)") from None
    if path.is_symlink() or not path.is_dir():  # planted between the check and the mkdir
        raise CheckpointError(f"{path} is {_describe(path)}; expected {what}, a directory inside {root}")
    check_inside(path, root)
    return path


def hold_lock(root: Path) -> int:
    """Create `root` if missing and hold ``root/.lock`` (flock) for this process's lifetime, its pid and host
    written into it; the fd. Another process holding it: one CheckpointError line naming that holder."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    key = os.path.join(os.path.realpath(root), ".lock")
    if key in _HELD:  # an earlier stage of this same process (stages run one after another)
        with contextlib.suppress(OSError):
            os.close(_HELD.pop(key))
    fd = open_lock(path)  # never through a planted link: it is truncated and rewritten below
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise CheckpointError(
            f"{root} is in use by {holder} (lock {path}); wait for that run to end or give this one "
            "another checkpoints directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(
        fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0
    )
    _HELD[key] = fd  # released by the kernel when the process ends, however it ends
    return fd


def open_lock(path: Path) -> int:
    """Open (creating) the lock file `path` without following links; a planted link, hard link or
    special file there is replaced by a fresh plain file (so the pid line written into it can never
    land in another file)."""
    for _ in range(3):  # a replacement raced by another process: look again
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(path).st_mode):  # not even opened: a device or FIFO has side effects
                _replace(path, f"{path} is {_describe(path)}")
        try:
            fd = os.open(path, _LOCK_FLAGS | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EEXIST):
                raise
            _replace(path, f"{path} is {_describe(path)}")
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        kind = "a file with other names (hard links)" if stat.S_ISREG(st.st_mode) else "not a plain file"
        _replace(path, f"{path} is {kind}")
    raise CheckpointError(f"{path}: could not create a plain lock file (something keeps replacing it)")


def _replace(path: Path, problem: str) -> None:
    if path.is_dir() and not path.is_symlink():
        raise CheckpointError(f"{problem}: a directory; expected the run's lock file (remove the directory)")
    log.warning("%s; removed that name (not what it points to) and created a plain lock file", problem)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def scrub_tree(directory: Path) -> None:
    """Inside `directory` (not following links): remove links, give hard-linked files a copy of their own.

    For the libraries that open their files in the run's logs by name and write through them (TensorBoard,
    MLflow's file store, the profiler): after this, each such name is a plain file of this directory alone.
    """
    if directory.is_symlink() or not directory.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(directory):  # followlinks=False: a link to a dir is listed
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                remove_entry(path, "a plain file or directory (the run's logs hold no links)")
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                log.warning("%s had %d names (hard links); gave it a copy of its own so that writes to it stay "
                            "in %s", path, st.st_nlink, directory)  # fmt: skip
                _own_copy(path)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def _own_copy(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.unlinked-{os.getpid()}")
    remove_entry(tmp)
    with open(path, "rb") as src, open(tmp, "xb") as dst:  # "x": O_EXCL, never through a link
        shutil.copyfileobj(src, dst)
    os.replace(tmp, path)  # the name now points at the copy; the other names keep the old file untouched


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of `path` itself, not of a link's target; None when missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino) if not os.path.islink(path) else None


def loaded_state_problem(engine: Any, path: Path) -> str | None:
    """What DeepSpeed loaded but cannot train on: an optimizer state whose tensors do not have their
    parameter's shape (torch's load_state_dict does not check; the first step would fail), or NaN/inf."""
    for opt in optimizer_chain(engine):
        state, groups = getattr(opt, "state", None), getattr(opt, "param_groups", None)
        if isinstance(state, dict) and isinstance(groups, list):
            for group in groups:
                for p in group.get("params", []):
                    for key, value in (state.get(p) or {}).items():
                        if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                            return (f"{path}: optimizer state {key!r} has shape {tuple(value.shape)} for a parameter "
                                    f"of shape {tuple(p.shape)}")  # fmt: skip
    if not local_state_finite(engine):
        return f"{path}: the loaded weights or optimizer state hold NaN/inf"
    return None
