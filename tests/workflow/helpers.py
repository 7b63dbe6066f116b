"""A workspace as a user has one: the workflow files of this checkout and a params.yaml, in its own directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def workspace(root: Path, params_text: str) -> Path:
    """Copy the Snakefile, dvc.yaml and workflow/ into `root` (created) with `params_text` as params.yaml."""
    root.mkdir()
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "workflow", root / "workflow")
    (root / "params.yaml").write_text(params_text)
    (root / ".gitignore").write_text("/checkpoints/\n/logs/\n/.snakemake/\n")  # as the repository's own
    return root


def stage_env() -> dict[str, str]:
    """The environment a workspace's tools run in: this venv's commands first, this checkout's code."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    return env
