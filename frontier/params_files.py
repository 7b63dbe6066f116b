"""The params files a Snakemake run hands its jobs, named by the hash of what they hold.

With ``--config`` overrides (or another ``--configfile``) Snakemake's jobs must run exactly the config the
Snakefile validated, so it is written out under RESOLVED_DIR as ``params-<sha256[:16]>.yaml``. The name
is a promise about the content: a file found there is never trusted by its name. The writer rewrites
any file whose bytes differ (or that is not a plain file), and every reader checks the content against
the hash in the name before using it, so a file planted or edited between the two is refused.

Beside them, one stamp per stage, ``<stage>.outdated`` (mark_outdated): an input of the stage's rule whose
modification time tells Snakemake whether the stage's output on disk was built from other params.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from frontier.errors import ConfigError

RESOLVED_DIR = ".snakemake/frontier-params"
HEADER = "# Snakemake's validated config for this run (params.yaml with --config overrides)\n"
_NAME = re.compile(r"params-([0-9a-f]{16})\.yaml")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _refuse_links(directory: Path) -> None:
    """The resolved directory and its parent are real directories here, not links to somewhere else."""
    for part in (directory.parent, directory):
        if part.is_symlink():
            raise ConfigError(
                f"{part}: a symbolic link (to {os.readlink(part)}); Frontier writes validated params files here "
                "and follows no link out of the workspace: remove it"
            )


def write_resolved(config: dict[str, Any], directory: str | Path = RESOLVED_DIR) -> Path:
    """Write `config` (already validated) for the jobs to read; the path names its content's hash."""
    import yaml

    from frontier.utils.atomic import atomic_file

    directory = Path(directory)
    _refuse_links(directory)
    text = yaml.safe_dump(config, sort_keys=False)
    path = directory / f"params-{_digest(text)}.yaml"
    content = HEADER + text
    try:
        st = os.lstat(path)
        current = path.read_text(encoding="utf-8") if stat.S_ISREG(st.st_mode) else None
    except (OSError, UnicodeDecodeError):
        current = None
    if current != content:  # missing, planted, edited or a link: write ours (the rename replaces a link itself)
        with atomic_file(path) as f:
            f.write(content)
    return path


def check_resolved(path: Path, text: str) -> None:
    """Refuse a resolved params file whose content is not what its name promises (no-op for other files)."""
    match = _NAME.fullmatch(path.name)
    if match is None or path.parent.name != Path(RESOLVED_DIR).name:
        return
    if not text.startswith(HEADER) or _digest(text[len(HEADER) :]) != match.group(1):
        raise ConfigError(
            f"{path}: its content does not match the hash in its name (edited or planted after Snakemake "
            "validated it); delete it and run snakemake again"
        )


def mark_outdated(stage: str, why: list[str], directory: str | Path = RESOLVED_DIR, *, touch: bool = True) -> Path:
    """The stamp `stage`'s rule reads as an input, dated now when its output on disk was not built from this
    run's params (`why` says what differs, and is its content), else dated 1970; with `touch` False it is only
    made where missing (dated 1970), and otherwise left as it is.

    Snakemake reruns a job whose input is newer than its output, and then what follows it: so a stage runs again
    exactly when its output's own record of its params differs (whichever tool built or restored the output),
    and a run that rebuilt it leaves its output newer than the stamp. Snakemake's params trigger cannot say
    this: it compares with what it recorded at the job's last run, and a value that depended on the output
    would differ again once the output is rebuilt, rerunning the stage twice. Snakemake also skips an input
    whose checksum is the one it recorded at the job's last run, so an outdated stamp's content is new each time.
    """
    from frontier.utils.atomic import atomic_file

    directory = Path(directory)
    _refuse_links(directory)
    path = directory / f"{stage}.outdated"
    try:
        st = os.lstat(path)
        plain_empty = stat.S_ISREG(st.st_mode) and st.st_size == 0
    except FileNotFoundError:
        st, plain_empty = None, False
    if why and touch:
        with atomic_file(path, fsync=False) as f:
            f.write("".join(f"{line}\n" for line in why) + f"# checked {time.time_ns()}\n")
        return path
    if st is not None and not touch:
        return path
    if not plain_empty:  # missing, a link, or the text of an earlier outdated output: an empty plain file
        with atomic_file(path, fsync=False):
            pass
    os.utime(path, (0, 0), follow_symlinks=False)
    return path
