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
- inside ``logs/``, links are removed and hard-linked files get a copy of their own, so a later
  write (the monitor opens its files by name) cannot reach a file outside.

Each replaced link is reported with one warning line naming it and what was expected instead.

Content is checked too, since a manifest proves only that the files are the ones written (or rewritten
along with it): the trainer state against its manifest (against_manifest), and what DeepSpeed loaded
against the model before a step runs on it (loaded_state_problem).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import torch

from frontier.errors import CheckpointError
from frontier.train import manifest
from frontier.train.engine import local_state_finite
from frontier.train.state import TrainerState

log = logging.getLogger("frontier.train")

# no link is followed, a FIFO or device planted as the lock does not block the open, no terminal is adopted
_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _describe(path: Path) -> str:
    try:
        return f"a link to {os.readlink(path)}"
    except OSError:
        return "not a plain file or directory"


def remove_entry(path: Path) -> None:
    """Remove `path` whatever it is, never following a link: a link or file is unlinked, a real
    directory deleted with its content (shutil.rmtree refuses links, and walks none inside)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def drop_planted_link(path: Path, expected: str) -> bool:
    """Unlink `path` if it is a symbolic link (dangling or not), with one warning line; True if it was."""
    if not path.is_symlink():
        return False
    log.warning("%s was %s; removed the link (not its target): expected %s", path, _describe(path), expected)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
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

    The monitor, the trackers and the batch-size record open their files by name and write through
    them; after this, each such name is a plain file of this directory alone.
    """
    if directory.is_symlink() or not directory.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(directory):  # followlinks=False: a link to a dir is listed
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                log.warning("%s was %s; removed the link (not its target): the run's logs hold plain files only",
                            path, _describe(path))  # fmt: skip
                os.unlink(path)
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


def against_manifest(state: TrainerState, path: Path) -> str | None:
    """A trainer state that contradicts its own checkpoint (step, run): a problem line, else None."""
    meta, where = manifest.read_manifest(path), path / "trainer_state.json"
    named = int(path.name[5:]) if path.name.startswith("step_") and path.name[5:].isdigit() else state.step
    if meta.get("step") != state.step or named != state.step:
        return f"{where}: step={state.step}, but the checkpoint is of step {meta.get('step')} ({path.name})"
    if meta.get("run_id", state.run_id) != state.run_id:
        return f"{where}: run_id={state.run_id!r}, but the manifest names {meta.get('run_id')!r}"
    return None


def loaded_state_problem(engine: Any, path: Path) -> str | None:
    """What DeepSpeed loaded but cannot train on: an optimizer state whose tensors do not have their
    parameter's shape (torch's load_state_dict does not check; the first step would fail), or NaN/inf."""
    opt, seen = getattr(engine, "optimizer", None), set()
    while opt is not None and id(opt) not in seen:  # DeepSpeed's wrapper chain down to the torch optimizer
        seen.add(id(opt))
        state, groups = getattr(opt, "state", None), getattr(opt, "param_groups", None)
        if isinstance(state, dict) and isinstance(groups, list):
            for group in groups:
                for p in group.get("params", []):
                    for key, value in (state.get(p) or {}).items():
                        if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                            return (f"{path}: optimizer state {key!r} has shape {tuple(value.shape)} for a parameter "
                                    f"of shape {tuple(p.shape)}")  # fmt: skip
        opt = getattr(opt, "optimizer", None)
    if not local_state_finite(engine):
        return f"{path}: the loaded weights or optimizer state hold NaN/inf"
    return None
