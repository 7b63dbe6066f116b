"""The command line as a user meets it: --version, help examples that work, log files without bar frames."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import frontier.cli
from frontier import __version__
from frontier.cli import build_parser
from frontier.config import load_params
from frontier.pipeline import ALL_STAGES

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
    import torch have one (DeepSpeed's stages a higher one); check, dvc-yaml and exp import no torch."""
    commands = build_parser()._subparsers._group_actions[0].choices
    floors = {name: sub._defaults["address_floor_mib"] for name, sub in commands.items()}
    assert floors.pop("check") is None and floors.pop("dvc-yaml") is None and floors.pop("exp") is None
    assert floors.pop("train") == floors.pop("finetune") == floors.pop("preference") == 1024
    assert floors and set(floors.values()) == {768} and "env" in floors, floors


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


def test_stage_subcommands_are_built_from_the_declarations() -> None:
    """Each stage's subcommand: --params when it reads params, its path flags (required ones first),
    --workers when parallel, --local_rank when it launches ranks, its address-space floor."""
    commands = _subparsers()
    stages = {}
    for stage in ALL_STAGES.values():
        stages.setdefault(stage.subcommand, stage)
    assert list(commands) == [*stages, "check", "env", "dvc-yaml", "exp"]
    for name, stage in stages.items():
        sub = commands[name]
        options = {a.option_strings[0]: a for a in sub._actions if a.option_strings}
        flags = [o for o in options if o not in ("-h", "--params", "--set", "--workers", "--local_rank")]
        assert flags == [f.option for f in stage.cli_flags], name
        for flag in stage.cli_flags:
            assert (options[flag.option].required, options[flag.option].help) == (flag.required, flag.help)
        assert ("--params" in options) == bool(stage.params) == ("--set" in options), name
        assert ("--workers" in options) == stage.parallel and ("--local_rank" in options) == stage.launches, name
        assert sub._defaults["address_floor_mib"] == stage.address_floor_mib and sub.description == stage.help


@pytest.mark.parametrize(
    ("argv", "target", "args", "kwargs"),
    [
        (["prepare", "--out", "o"], "frontier.data.prepare:prepare", ["P", "o"], {}),
        (["tokenize", "--data", "d", "--tokenizer", "t", "--out", "o"], "frontier.data.pack:tokenize",
         ["P", "d", "t", "o"], {"workers": 0}),
        (["tokenize", "--data", "d", "--tokenizer", "t", "--out", "o", "--workers", "3"], "frontier.data.pack:tokenize",
         ["P", "d", "t", "o"], {"workers": 3}),
        (["train", "--data", "d", "--tokenizer", "t", "--out", "o", "--checkpoints", "c", "--local_rank=0"],
         "frontier.train.run:train", ["P", "d", "t", "o", "c"], {}),
        # optional paths come after the required ones, None when absent
        (["evaluate", "--model", "m", "--data", "d", "--prepared", "p", "--out", "o"],
         "frontier.eval.evaluate:evaluate", ["P", "m", "d", "o", "p"], {}),
        (["evaluate", "--model", "m", "--data", "d", "--out", "o"], "frontier.eval.evaluate:evaluate",
         ["P", "m", "d", "o", None], {}),
        (["sft-data", "--data", "d", "--out", "o"], "frontier.finetune.sft_data:build_sft_pairs", ["P", "d", "o"], {}),
        (["finetune", "--model", "m", "--data", "d", "--out", "o", "--checkpoints", "c"],
         "frontier.finetune.run:finetune", ["P", "m", "d", "o", "c"], {}),
        (["merge", "--adapter", "a", "--out", "o"], "frontier.finetune.merge:merge", ["a", "o"], {}),  # no params
        (["passk", "--model", "m", "--problems", "p.jsonl", "--out", "o"], "frontier.eval.passk:run_passk",
         ["P", "m", "o", "p.jsonl"], {}),
        (["passk", "--model", "m", "--out", "o"], "frontier.eval.passk:run_passk", ["P", "m", "o", None], {}),
        (["report", "--train", "t", "--eval", "e", "--out", "o", "--eval-finetuned", "ef"],
         "frontier.report.build:build_report", ["P", "t", "e", "o", None, "ef", None, None], {}),
    ],
)  # fmt: skip
def test_a_stage_subcommand_calls_its_entry_function(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], target: str, args: list, kwargs: dict
) -> None:
    calls = []
    monkeypatch.setattr(frontier.cli, "_params", lambda ns: "P")
    monkeypatch.setattr(frontier.cli, "_launched", lambda ns, params: False)
    monkeypatch.setattr(frontier.cli, "_call", lambda *a, **k: calls.append((a, k)))
    ns = build_parser().parse_args(argv)
    ns.fn(ns)
    expected = [a if a in ("P", None) else Path(a) for a in args]
    assert calls == [((target, *expected), kwargs)]


def test_a_stage_that_launches_its_ranks_does_not_run_in_the_launching_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(frontier.cli, "_params", lambda ns: "P")
    monkeypatch.setattr(frontier.cli, "_launched", lambda ns, params: calls.append(ns.command) or True)
    monkeypatch.setattr(frontier.cli, "_call", lambda *a, **k: calls.append(a))
    for name in ("train", "finetune"):
        paths = ["--data", "d", "--out", "o", "--checkpoints", "c"]
        paths += ["--tokenizer", "t"] if name == "train" else ["--model", "m"]
        ns = build_parser().parse_args([name, *paths])
        assert ns.fn(ns) is None
    assert calls == ["train", "finetune"]
