"""The command line as a user meets it: --version, help examples that work, log files without bar frames."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from frontier import __version__
from frontier.cli import build_parser
from frontier.config import load_params

REPO = Path(__file__).resolve().parents[1]


def _frontier(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TQDM_DISABLE", None)
    return subprocess.run([sys.executable, "-m", "frontier", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)  # fmt: skip


def test_version() -> None:
    proc = _frontier("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"frontier {__version__}" and __version__ != "0+unknown"


def test_every_set_example_in_the_help_is_a_valid_override() -> None:
    parser = build_parser()
    texts = [parser.format_help()] + [
        sub.format_help() for sub in parser._subparsers._group_actions[0].choices.values()
    ]
    examples = {m for text in texts for m in re.findall(r"--set ([a-z_][\w.]*=[^\s),]+)", text)}
    assert examples, "the help shows --set examples"
    for example in examples:
        load_params(None, [example])  # raises ConfigError for an unknown key or a bad value


def test_logs_get_plain_lines_with_rate_and_eta_not_bar_frames(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i}.txt").write_text(f"document {i} " + " ".join(f"w{i}_{j}" for j in range(80)) + "\n")
    params = {"prepare": {"sources": [{"name": "c", "kind": "files", "path": str(corpus)}]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _frontier("prepare", "--params", "params.yaml", "--out", "prepared", cwd=tmp_path)  # stderr: a pipe
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr, "progress-bar frames in a log"
    done = [line for line in proc.stderr.splitlines() if "prepare c:" in line and "(done)" in line]
    assert done and re.search(r"MiB/s, 30 docs \(.*/s\), ETA ", done[0]), proc.stderr


def test_every_command_carries_its_address_space_floor() -> None:
    """The floor lives on each subparser (no list of names kept apart from the parser): commands that
    import torch have one (DeepSpeed's stages a higher one); check and dvc-yaml import no torch."""
    commands = build_parser()._subparsers._group_actions[0].choices
    floors = {name: sub._defaults["address_floor_mib"] for name, sub in commands.items()}
    assert floors.pop("check") is None and floors.pop("dvc-yaml") is None
    assert floors.pop("train") == floors.pop("finetune") == 1024
    assert floors and set(floors.values()) == {768} and "env" in floors, floors
