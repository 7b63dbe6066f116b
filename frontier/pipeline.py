"""The stage graph, defined once: Snakemake rules and dvc.yaml are both generated from it.

Each `Stage` names its `frontier` command line, the paths it reads and writes, and the params
sections it depends on. workflow/rules/*.smk build their rules from `STAGES`; `frontier dvc-yaml`
writes dvc.yaml from them (a test fails when the committed dvc.yaml drifts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a `frontier` subcommand with its inputs, outputs and parameters."""

    name: str
    args: tuple[str, ...]  # the command after `frontier <name> --params params.yaml`
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # top-level sections (or scalar keys) of params.yaml
    metrics: tuple[str, ...] = ()  # files inside outs, declared to DVC as top-level metrics
    plots: tuple[str, ...] = ()
    persist: tuple[str, ...] = ()  # kept between runs (resume state); not a Snakemake output
    parallel: bool = False  # takes --workers; Snakemake passes the cores it gives the rule


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "prepare",
            ("--out", "data/prepared"),
            outs=("data/prepared",),
            params=("prepare",),
        ),
        Stage(
            "tokenizer",
            ("--data", "data/prepared", "--out", "data/tokenizer"),
            deps=("data/prepared",),
            outs=("data/tokenizer",),
            params=("tokenizer",),
        ),
        Stage(
            "tokenize",
            ("--data", "data/prepared", "--tokenizer", "data/tokenizer", "--out", "data/tokens"),
            deps=("data/prepared", "data/tokenizer"),
            outs=("data/tokens",),
            params=("tokenize",),
            parallel=True,
        ),
        Stage(
            "train",
            (
                "--data",
                "data/tokens",
                "--tokenizer",
                "data/tokenizer",
                "--out",
                "runs/train",
                "--checkpoints",
                "checkpoints/train",
            ),
            deps=("data/tokens", "data/tokenizer"),
            outs=("runs/train",),
            params=("seed", "model", "kernels", "optimizer", "schedule", "train"),
            metrics=("runs/train/metrics.json", "runs/train/speed.json"),
            plots=("runs/train/plots/train.csv", "runs/train/plots/val.csv"),
            persist=("checkpoints/train",),
        ),
        Stage(
            "evaluate",
            (
                "--model",
                "runs/train/model",
                "--data",
                "data/tokens",
                "--prepared",
                "data/prepared",
                "--out",
                "runs/eval",
            ),
            deps=("runs/train", "data/tokens", "data/prepared"),
            outs=("runs/eval",),
            params=("evaluate", "tokenize"),
            metrics=("runs/eval/metrics.json",),
        ),
        Stage(
            "sft_data",
            ("--data", "data/prepared", "--out", "data/sft"),
            deps=("data/prepared",),
            outs=("data/sft",),
            params=("seed", "finetune"),
        ),
        Stage(
            "finetune",
            (
                "--model",
                "runs/train/model",
                "--data",
                "data/sft",
                "--out",
                "runs/finetune",
                "--checkpoints",
                "checkpoints/finetune",
            ),
            deps=("runs/train", "data/sft"),
            outs=("runs/finetune",),
            params=("seed", "kernels", "optimizer", "schedule", "train", "finetune"),
            metrics=("runs/finetune/metrics.json", "runs/finetune/speed.json"),
            persist=("checkpoints/finetune",),
        ),
        Stage(
            "merge",
            ("--adapter", "runs/finetune", "--out", "runs/merged"),
            deps=("runs/finetune",),
            outs=("runs/merged",),
        ),
        Stage(
            "evaluate_finetuned",
            (
                "--model",
                "runs/merged",
                "--data",
                "data/tokens",
                "--prepared",
                "data/prepared",
                "--out",
                "runs/eval_finetuned",
            ),
            deps=("runs/merged", "data/tokens", "data/prepared"),
            outs=("runs/eval_finetuned",),
            params=("evaluate", "tokenize"),
            metrics=("runs/eval_finetuned/metrics.json",),
        ),
        Stage(
            "report",
            (
                "--train",
                "runs/train",
                "--eval",
                "runs/eval",
                "--finetune",
                "runs/finetune",
                "--out",
                "reports",
            ),
            deps=("runs/train", "runs/eval", "runs/finetune", "runs/eval_finetuned"),
            outs=("reports",),
            params=("report",),
        ),
    ]
}

# The CLI subcommand a stage runs (evaluate_finetuned is `frontier evaluate` on the merged model).
SUBCOMMAND = {"evaluate_finetuned": "evaluate", "sft_data": "sft-data"}


def command(stage: Stage) -> str:
    """The shell command of `stage`, as DVC runs it (Snakemake appends ``--workers {threads}``
    to parallel stages; the worker count never changes a stage's output)."""
    sub = SUBCOMMAND.get(stage.name, stage.name)
    params = ["--params", PARAMS_FILE] if stage.params else []
    return " ".join(["frontier", sub, *params, *stage.args])


def fingerprint(params_data: dict[str, Any], stage: Stage) -> str:
    """A stable hash of the resolved params sections `stage` depends on (Snakemake's params trigger)."""
    subset = {k: params_data.get(k) for k in stage.params}
    return hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dvc_yaml() -> dict[str, Any]:
    """The dvc.yaml document for all stages (params per key, metrics and plots declared)."""
    from frontier.config import section_keys

    stages: dict[str, Any] = {}
    for stage in STAGES.values():
        entry: dict[str, Any] = {"cmd": command(stage)}
        if stage.deps:
            entry["deps"] = list(stage.deps)
        keys: list[str] = []
        for section in stage.params:
            keys += section_keys(section)
        if keys:
            entry["params"] = keys
        outs: list[Any] = list(stage.outs)
        outs += [{p: {"persist": True, "cache": False}} for p in stage.persist]
        if outs:
            entry["outs"] = outs
        stages[stage.name] = entry
    # Metrics and plots live inside stage output directories; DVC accepts them only as top-level
    # declarations (a stage's own metrics: inside its outs would overlap).
    metrics = [m for s in STAGES.values() for m in s.metrics]
    plots = [{p: {"x": "step"}} for s in STAGES.values() for p in s.plots]
    return {"stages": stages, "metrics": metrics, "plots": plots}


def render_dvc_yaml() -> str:
    import yaml

    header = "# Generated by `frontier dvc-yaml` from frontier/pipeline.py: edit there, then regenerate.\n"
    return header + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=120)
