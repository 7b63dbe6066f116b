"""A workspace as a user has one: the workflow files of this checkout and a params.yaml, in its own directory."""

from __future__ import annotations

import os
import re
import shlex
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


def without_frontier_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with no `frontier` command on its PATH (the venv's bin left out, as when it is not activated)."""
    env = dict(env)
    env.pop("VIRTUAL_ENV", None)
    keep = [
        d for d in env.get("PATH", "").split(os.pathsep) if d and not os.access(os.path.join(d, "frontier"), os.X_OK)
    ]
    env["PATH"] = os.pathsep.join(keep)
    return env


def readme_commands(heading: str) -> list[str]:
    """The command lines of the first ```bash block under `heading` in README.md, as written (comment-only
    lines left out): a test runs them as they stand, so the README cannot promise what does not work."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if shlex.split(line, comments=True)]


def snakemake_jobs(output: str) -> set[str]:
    """Rules Snakemake ran (or, with --dry-run, would run), from its output (the "rule <name>:" lines)."""
    return set(re.findall(r"^(?:local)?rule (\w+):$", output, re.MULTILINE))


def dvc_stages(output: str) -> set[str]:
    """Stages `dvc repro` / `dvc exp run` ran, from its output."""
    return set(re.findall(r"^Running stage '(\w+)'", output, re.MULTILINE))
