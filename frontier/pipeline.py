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

from frontier.params_files import write_resolved

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a `frontier` subcommand with its inputs, outputs and parameters."""

    name: str
    args: tuple[str, ...]  # the command after `frontier <name> --params params.yaml`
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # sections, scalar keys or dotted keys ("launch.nnodes") of params.yaml
    metrics: tuple[str, ...] = ()  # files inside outs, declared to DVC as top-level metrics
    # named DVC plots: name -> (csv inside outs -> y column); x is always "step"
    plots: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    report: tuple[str, ...] = ()  # file patterns inside outs that `snakemake --report` shows
    parallel: bool = False  # takes --workers; Snakemake passes the cores it gives the rule
    multithreaded: bool = False  # uses every core it is given (torch threads); Snakemake gives it all


# What of launch: a run's outputs depend on (its world size, in metrics.json). The rest (node rank,
# addresses, threads, what a cluster job asks for) changes where a run executes, not what it makes.
LAUNCH_LAYOUT = ("launch.launcher", "launch.nproc_per_node", "launch.nnodes")

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
            params=("seed", "model", "kernels", "optimizer", "schedule", "train", *LAUNCH_LAYOUT),
            metrics=("runs/train/metrics.json", "runs/train/speed.json"),
            plots=(
                ("loss", (("runs/train/plots/train.csv", "loss"), ("runs/train/plots/val.csv", "val_loss"))),
                ("learning_rate", (("runs/train/plots/train.csv", "lr"),)),
                ("grad_norm", (("runs/train/plots/train.csv", "grad_norm"),)),
                ("throughput", (("runs/train/plots/train.csv", "tokens_per_s"),)),
            ),
            report=("{name}.json", "plots/{name}.csv"),
            multithreaded=True,
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
            params=("seed", "evaluate", "tokenize"),
            metrics=("runs/eval/metrics.json",),
            report=("{name}.json", "{name}.jsonl"),
        ),
        Stage(
            "sft_data",
            ("--data", "data/prepared", "--out", "data/sft"),
            deps=("data/prepared",),
            outs=("data/sft",),
            params=("finetune",),
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
            params=("seed", "kernels", "optimizer", "schedule", "train", "finetune", *LAUNCH_LAYOUT),
            metrics=("runs/finetune/metrics.json", "runs/finetune/speed.json"),
            plots=(
                (
                    "finetune_loss",
                    (("runs/finetune/plots/train.csv", "loss"), ("runs/finetune/plots/val.csv", "val_loss")),
                ),
            ),
            report=("{name}.json",),
            multithreaded=True,
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
            params=("seed", "evaluate", "tokenize"),
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
                "--eval-finetuned",
                "runs/eval_finetuned",
                "--out",
                "reports",
            ),
            deps=("runs/train", "runs/eval", "runs/finetune", "runs/eval_finetuned"),
            outs=("reports",),
            params=("report",),
            report=("{name}.html", "{name}.png"),
        ),
    ]
}

# The CLI subcommand a stage runs (evaluate_finetuned is `frontier evaluate` on the merged model).
SUBCOMMAND = {"evaluate_finetuned": "evaluate", "sft_data": "sft-data"}


def command(stage: Stage, params_file: str = PARAMS_FILE) -> str:
    """The shell command of `stage`, as DVC runs it (Snakemake appends ``--workers {threads}``
    to parallel stages; the worker count never changes a stage's output)."""
    sub = SUBCOMMAND.get(stage.name, stage.name)
    params = ["--params", params_file] if stage.params else []
    return " ".join(["frontier", sub, *params, *stage.args])


def typed_cli_config(config: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's config with ``--config`` strings read back as YAML where the schema wants a non-string.

    Snakemake merges ``--config train='{max_steps: 7}'`` into its config as the string '7'; the same
    override must mean 7 here, as it does with ``frontier ... --set train.max_steps=7``.
    """
    import dataclasses
    import typing

    import yaml

    from frontier.config import Params, unwrap_optional
    from frontier.utils.strict_yaml import YamlRefused, strict_load

    def wants_text(tp: Any) -> bool:
        tp = unwrap_optional(tp)
        if tp is str:
            return True
        return typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(tp))

    def walk(value: Any, tp: Any) -> Any:
        tp = unwrap_optional(tp)
        if isinstance(value, dict) and dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            return {k: walk(v, hints[k]) if k in hints else v for k, v in value.items()}
        if isinstance(value, str) and not wants_text(tp):
            try:
                parsed = strict_load(value)
            except (YamlRefused, yaml.YAMLError, RecursionError, ValueError):
                return value  # left as text: validation then names the key and what it expected
            return parsed if not isinstance(parsed, str) else value
        return value

    return walk(config, Params)


def params_file_for(config: dict[str, Any], on_disk: dict[str, Any] | None) -> str:
    """The params file Snakemake's jobs run with, so they run exactly what Snakemake validated.

    params.yaml when Snakemake's config is its content (`on_disk`, as read); otherwise (``--config`` or
    another ``--configfile``) the config written under RESOLVED_DIR, named by its hash (frontier.params_files).
    """
    return PARAMS_FILE if config == on_disk else str(write_resolved(config))


def fingerprint(params_data: dict[str, Any], stage: Stage) -> str:
    """A stable hash of the resolved params sections `stage` depends on (Snakemake's params trigger)."""
    subset = {k: _lookup(params_data, k) for k in stage.params}
    return hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


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
        # Checkpoint directories are not outputs: DVC neither hashes nor removes them, so returning to
        # an earlier experiment (git checkout + dvc checkout) restores it from the cache without a rerun.
        if stage.outs:
            entry["outs"] = list(stage.outs)
        stages[stage.name] = entry
    # Metrics and plots live inside stage output directories; DVC accepts them only as top-level
    # declarations (a stage's own metrics: inside its outs would overlap).
    metrics = [m for s in STAGES.values() for m in s.metrics]
    plots = [
        {name: {"x": "step", "y": {path: column for path, column in series}}}
        for s in STAGES.values()
        for name, series in s.plots
    ]
    return {"stages": stages, "metrics": metrics, "plots": plots}


def render_dvc_yaml() -> str:
    import yaml

    header = "# Generated by `frontier dvc-yaml` from frontier/pipeline.py: edit there, then regenerate.\n"
    return header + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=120)
