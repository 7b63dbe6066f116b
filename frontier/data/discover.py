"""Finding the files of a source: the standard library, a directory, a glob, or one file.

Listings are sorted, so the documents read (and ``max_docs``) never depend on directory order.
Globs are expanded here rather than by :func:`glob.glob`, which follows directory symlinks under
``**`` without remembering where it has been: one ``..`` link makes it list the tree again below
itself, two make it exponential (a hang). Here ``**`` reads every directory once: real
directories first, then symlinked ones whose target was not read yet (so a tree reached both
ways is listed by its real path, a link to a directory outside the root is still followed, and
a loop ends at once). Otherwise the match rules are glob.glob's with ``recursive=True``: names
starting with "." match only a pattern starting with ".", and ``**`` skips them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sysconfig
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from frontier.config.data import SourceConfig
from frontier.errors import DataError

_MAGIC = re.compile(r"[*?[]")
_SKIP_DIRS = ("site-packages", "dist-packages")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def walk(root: Path, *, suffix: str | None = None) -> list[Path]:
    """Files under `root`, recursively, skipping hidden entries and site-/dist-packages.

    os.walk does not follow directory symlinks, so a link loop under `root` is never entered."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
        for name in filenames:
            if not name.startswith(".") and (suffix is None or name.endswith(suffix)):
                out.append(Path(dirpath) / name)
    return out


def _dir_key(path: str, *, follow: bool) -> tuple[int, int] | None:
    try:
        st = os.stat(path or os.curdir, follow_symlinks=follow)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _tree(top: str) -> Iterator[tuple[str, bool]]:
    """(path, is_dir) of every non-hidden entry below `top`, each directory read once (see module doc)."""
    visited = {_dir_key(top, follow=True)}
    stack = [top]
    links: deque[str] = deque()  # symlinked directories, followed only after every real one was read
    while stack or links:
        if not stack:
            link = links.popleft()
            key = _dir_key(link, follow=True)
            if key is None or key in visited:
                continue  # a loop, or a tree already listed by another path
            visited.add(key)
            yield link, True
            stack.append(link)
            continue
        directory = stack.pop()
        try:
            with os.scandir(directory or os.curdir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable directories are skipped, as glob.glob does
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(directory, entry.name)
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
            except OSError:
                is_dir = is_link = False
            if not is_dir:
                yield path, False
            elif is_link:
                links.append(path)
            elif (key := _dir_key(path, follow=False)) is not None and key not in visited:
                visited.add(key)  # a bind mount can loop without a symlink
                yield path, True
                stack.append(path)


def _listdir(directory: str, pattern: str) -> list[str]:
    try:
        names = os.listdir(directory or os.curdir)
    except OSError:
        return []
    if not pattern.startswith("."):
        names = [n for n in names if not n.startswith(".")]
    return sorted(fnmatch.filter(names, pattern))


def _expand(base: str, parts: list[str]) -> Iterator[str]:
    """Paths matching `parts` (pattern components) below `base` ("" is the working directory)."""
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        if not rest:  # "**" last: `base` itself (as glob.glob) and every entry below, files included
            yield base
            yield from (path for path, _ in _tree(base))
            return
        yield from _expand(base, rest)  # "**" also matches no directory at all
        for path, is_dir in _tree(base):
            if is_dir:
                yield from _expand(path, rest)
    elif _MAGIC.search(head):
        for name in _listdir(base, head):
            path = os.path.join(base, name)
            if not rest:
                yield path
            elif os.path.isdir(path):
                yield from _expand(path, rest)
    else:
        path = os.path.join(base, head)
        if rest:
            yield from _expand(path, rest)
        elif os.path.lexists(path):
            yield path


def glob_files(pattern: str) -> list[Path]:
    """Regular files (or links to them) matching `pattern`, sorted and each once; ``**`` recurses."""
    anchor = os.sep if pattern.startswith(os.sep) else ""
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if part and not (part == "**" and parts[-1:] == ["**"]):  # a/**/**/b is a/**/b: one walk, not one per **
            parts.append(part)
    return sorted({Path(p) for p in _expand(anchor, parts) if os.path.isfile(p)})


def resolve_files(src: SourceConfig) -> list[Path]:
    """The files of a source, sorted; DataError if the path does not exist or matches nothing."""
    if src.kind == "stdlib":
        root = stdlib_root()
        files = walk(root, suffix=".py")
        if not files:
            raise DataError(f"source {src.name!r}: no .py files under the standard library {root}")
        return sorted(files)
    assert src.path is not None  # SourceConfig.validate guarantees it
    path = Path(os.path.expanduser(src.path))
    if any(ch in src.path for ch in "*?["):
        files = glob_files(str(path))
        if not files:
            raise DataError(f"source {src.name!r}: glob {src.path!r} matches no files")
        return files
    if path.is_dir():
        files = walk(path)
        if not files:
            raise DataError(f"source {src.name!r}: directory {src.path!r} holds no files")
        return sorted(files)
    if path.exists():
        return [path]
    raise DataError(f"source {src.name!r}: path {src.path!r} does not exist (expected a file, directory or glob)")
