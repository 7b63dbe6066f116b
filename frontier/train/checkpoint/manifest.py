"""A checkpoint's manifest: the sha256 and size of every file in it, plus a little metadata.

A checkpoint is trusted only when its manifest parses, every listed file exists with the listed
size and hash, and no unlisted file sits beside them (DeepSpeed finds some files by pattern, so
a stray file could otherwise be loaded unverified). A checkpoint holds plain files and directories
only: a symbolic link anywhere in it (or the checkpoint directory itself a link) makes it untrusted,
since what it points to lies outside the checkpoint and can change after the hashes are taken.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from frontier.utils.atomic import atomic_file
from frontier.utils.hashing import sha256_file

MANIFEST = "manifest.json"
FORMAT = 1


def _walk(directory: Path) -> tuple[list[str], str | None]:
    """Every plain file under `directory` but the manifest (relative, sorted), and the first symbolic link at or
    under it ("." for the directory itself), or None: one walk, entering no link."""
    if directory.is_symlink():
        return [], "."
    files, link = [], None
    for dirpath, dirnames, filenames in os.walk(directory):  # links to directories are listed, not entered
        for name in sorted([*dirnames, *filenames]):
            path = os.path.join(dirpath, name)
            rel = Path(path).relative_to(directory).as_posix()
            if os.path.islink(path):
                link = link or rel
            elif name in filenames and os.path.isfile(path) and name != MANIFEST:
                files.append(rel)
    return sorted(files), link


def write_manifest(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under `directory` and write manifest.json (atomically) beside them."""
    files = {
        rel: {"sha256": sha256_file(directory / rel), "bytes": (directory / rel).stat().st_size}
        for rel in _walk(directory)[0]
    }
    manifest = {"format": FORMAT, **meta, "files": files}
    with atomic_file(directory / MANIFEST) as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest; ValueError describing why it is unusable."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError("manifest.json missing (an interrupted or foreign checkpoint)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest.json unreadable ({exc.__class__.__name__})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise ValueError(f"manifest.json is not a format-{FORMAT} checkpoint manifest")
    return manifest


def digest(directory: Path) -> str:
    """sha256 of the manifest file: it names every file's hash, so it stands for the whole checkpoint."""
    return sha256_file(directory / MANIFEST)


def verify(directory: Path) -> str | None:
    """None when the checkpoint matches its manifest, else the first problem found."""
    present, link = _walk(directory)
    if link is not None:
        return f"{link} is a symbolic link (a checkpoint holds plain files only)"
    try:
        manifest = read_manifest(directory)
    except ValueError as exc:
        return str(exc)
    listed = manifest["files"]
    for rel, entry in sorted(listed.items()):
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != entry.get("bytes"):
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        if sha256_file(path) != entry.get("sha256"):
            return f"{rel} does not match its sha256 in the manifest (corrupt)"
    extra = [rel for rel in present if rel not in listed]
    if extra:
        return f"{extra[0]} is not listed in the manifest"
    return None
