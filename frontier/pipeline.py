"""Every stage, declared once: the CLI, the Snakemake rules and dvc.yaml are all built from it.

Each `Stage` names its `frontier` subcommand and the function that runs it, the path flags it takes (and
the paths the pipeline passes them), the paths it reads and writes, and the params sections it depends
on. frontier/cli.py builds a subcommand per stage; workflow/rules/*.smk build a rule per stage of the
pipeline (`STAGES`); `frontier dvc-yaml` writes dvc.yaml from the same (a test fails when the committed
dvc.yaml drifts); frontier.provenance.record_stage records the declared sections beside each output.
Entry functions are "module:function" strings: this module imports no stage package (and no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from frontier.params_files import write_resolved

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Flag:
    """A path flag of a stage's subcommand: ``--<name>`` (underscores as dashes), and what the pipeline passes."""

    name: str  # "eval_finetuned": --eval-finetuned on the command line
    help: str
    path: str | None = None  # what the pipeline's command passes; None: nothing (an optional flag left out)
    required: bool = True  # an optional flag the command line leaves out reaches the entry function as None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


# Address space (MiB) below which a stage cannot even start (frontier.cli refuses it up front):
# importing torch (every stage records its version) maps ~680 MiB, DeepSpeed and its gloo threads
# ~1 GiB more. Below these, failures come as aborts (std::bad_alloc terminating the process),
# ImportErrors of libtorch or OpenBLAS giving up.
TORCH_FLOOR_MIB = 768
DEEPSPEED_FLOOR_MIB = 1024


@dataclass(frozen=True)
class Stage:
    """One stage: a `frontier` subcommand, the function it runs, its inputs, outputs and parameters."""

    name: str
    entry: str  # "module:function", imported only when the stage runs (its heavy imports cost no other command)
    help: str  # the subcommand's help and description
    # In the order the pipeline's command passes them. The subcommand and the entry function take the
    # required ones first, then the optional ones, as Python orders arguments: entry(params, *required, *optional).
    flags: tuple[Flag, ...] = ()
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    # Sections, scalar keys or dotted keys ("launch.nnodes") of params.yaml. Empty: the subcommand takes
    # no --params and the entry function no params (merge).
    params: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # files inside outs, declared to DVC as top-level metrics
    # named DVC plots: name -> (csv inside outs -> y column); x is always "step"
    plots: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    report: tuple[str, ...] = ()  # file patterns inside outs that `snakemake --report` shows
    # takes --workers (0: <name>.workers from params, else every core; passed to the entry function as
    # workers=); Snakemake passes the cores it gives the rule
    parallel: bool = False
    multithreaded: bool = False  # uses every core it is given (torch threads); Snakemake gives it all
    # starts its ranks from params' launch: section (DeepSpeed): the subcommand starts them when no launcher
    # did, a cluster job asks for them
    launches: bool = False
    cli: str | None = None  # the subcommand, when not the name with dashes (sft_data is `frontier sft-data`)
    in_pipeline: bool = True  # a Snakemake rule and a dvc.yaml stage; False: a subcommand run by hand only
    # reads a local model directory that params name (model.init_from; the tokenizer stage: the one its
    # tokenizer comes from): "tokenizer" its tokenizer files, "model" all of it. They are deps too (stage_deps).
    reads_checkpoint: Literal["tokenizer", "model"] | None = None

    @property
    def subcommand(self) -> str:
        return self.cli or self.name.replace("_", "-")

    @property
    def args(self) -> tuple[str, ...]:
        """The command's path arguments, after `frontier <subcommand> --params params.yaml`."""
        return tuple(part for f in self.flags if f.path is not None for part in (f.option, f.path))

    @property
    def cli_flags(self) -> tuple[Flag, ...]:
        """The path flags in the order the subcommand lists them and the entry function takes them."""
        return tuple(f for f in self.flags if f.required) + tuple(f for f in self.flags if not f.required)

    @property
    def address_floor_mib(self) -> int:
        return DEEPSPEED_FLOOR_MIB if self.launches else TORCH_FLOOR_MIB

    def on_paths(self, name: str, paths: dict[str, str], **fields: Any) -> Stage:
        """This stage's subcommand again as another stage, on other paths; `fields` are its own deps,
        outs, metrics, plots and report (not inherited: they name this stage's paths)."""
        flags = tuple(replace(f, path=paths.get(f.name, f.path)) for f in self.flags)
        own = {"deps": (), "outs": (), "metrics": (), "plots": (), "report": (), **fields}
        return replace(self, name=name, cli=self.subcommand, flags=flags, **own)


# What of launch: a run's outputs depend on (its world size, in metrics.json). The rest (node rank,
# addresses, threads, what a cluster job asks for) changes where a run executes, not what it makes.
LAUNCH_LAYOUT = ("launch.launcher", "launch.nproc_per_node", "launch.nnodes")
_CHECKPOINTS = "checkpoint directory (kept between runs for resume)"

# Declared before the list: evaluate_finetuned runs the same subcommand on the merged model.
_EVALUATE = Stage(
    "evaluate",
    "frontier.eval.evaluate:evaluate",
    "val loss, perplexity, bits-per-byte, samples",
    (
        Flag("model", "Hugging Face model directory", "runs/train/model"),
        Flag("data", "tokens directory", "data/tokens"),
        Flag("prepared", "prepared documents directory (per-source figures)", "data/prepared", required=False),
        Flag("out", "output directory", "runs/eval"),
    ),
    deps=("runs/train", "data/tokens", "data/prepared"),
    outs=("runs/eval",),
    params=("seed", "evaluate", "tokenize"),
    metrics=("runs/eval/metrics.json",),
    report=("{name}.json", "{name}.jsonl"),
)

# Declared before the list: merge_preference runs the same subcommand on the preference stage's output.
_MERGE = Stage(
    "merge",
    "frontier.finetune.merge:merge",
    "the fine-tuned full model: the adapter merged into its base (method full: the model itself)",
    (
        Flag("adapter", "adapter directory", "runs/finetune"),
        Flag("out", "output model directory", "runs/merged"),
    ),
    deps=("runs/finetune",),
    outs=("runs/merged",),
)


def _index(stages: list[Stage]) -> dict[str, Stage]:
    """The stages by name, once the declarations pass what each consumer relies on (a wrong one fails at
    import, before any rule, subcommand or dvc.yaml disagrees with another)."""
    by_name: dict[str, Stage] = {}
    by_command: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in by_name:
            raise ValueError(f"two stages are named {stage.name!r}")
        first = by_command.setdefault(stage.subcommand, stage)
        if _cli_view(first) != _cli_view(stage):  # one subparser serves both
            raise ValueError(f"{stage.name} and {first.name} share `frontier {stage.subcommand}` but declare it apart")
        if stage.launches and not any(key.split(".")[0] == "launch" for key in stage.params):
            raise ValueError(f"{stage.name} launches ranks but does not declare the launch: params it reads")
        unset = [f.option for f in stage.flags if stage.in_pipeline and f.required and f.path is None]
        if unset:
            raise ValueError(f"{stage.name}: the pipeline passes no path to required {', '.join(unset)}")
        by_name[stage.name] = stage
    return by_name


def _cli_view(stage: Stage) -> tuple[Any, ...]:
    """What the subcommand and its runner are built from (paths aside)."""
    flags = tuple((f.name, f.help, f.required) for f in stage.flags)
    return stage.entry, stage.help, flags, stage.params, stage.parallel, stage.launches


# Every stage, in the order `frontier --help` lists them (and the pipeline's, in dvc.yaml).
ALL_STAGES: dict[str, Stage] = _index(
    [
        Stage(
            "prepare",
            "frontier.data.prepare:prepare",
            "read sources, clean, dedup, split into train/val documents",
            (Flag("out", "output directory", "data/prepared"),),
            outs=("data/prepared",),
            params=("prepare",),
        ),
        Stage(
            "tokenizer",
            "frontier.data.tokenizer:train_tokenizer",
            "train (or copy) the tokenizer",
            (
                Flag("data", "prepared documents directory", "data/prepared"),
                Flag("out", "output tokenizer directory", "data/tokenizer"),
            ),
            deps=("data/prepared",),
            outs=("data/tokenizer",),
            params=("tokenizer", "model.init_from"),
            reads_checkpoint="tokenizer",
        ),
        Stage(
            "tokenize",
            "frontier.data.pack:tokenize",
            "encode and pack documents into token shards",
            (
                Flag("data", "prepared documents directory", "data/prepared"),
                Flag("tokenizer", "tokenizer directory", "data/tokenizer"),
                Flag("out", "output tokens directory", "data/tokens"),
            ),
            deps=("data/prepared", "data/tokenizer"),
            outs=("data/tokens",),
            params=("tokenize",),
            parallel=True,
        ),
        Stage(
            "train",
            "frontier.train.run:train",
            "train a causal LM with DeepSpeed",
            (
                Flag("data", "tokens directory", "data/tokens"),
                Flag("tokenizer", "tokenizer directory", "data/tokenizer"),
                Flag("out", "output run directory", "runs/train"),
                Flag("checkpoints", _CHECKPOINTS, "checkpoints/train"),
            ),
            deps=("data/tokens", "data/tokenizer"),
            outs=("runs/train",),
            params=("seed", "model", "kernels", "optimizer", "schedule", "engine", "train", *LAUNCH_LAYOUT),
            metrics=("runs/train/metrics.json", "runs/train/speed.json"),
            plots=(
                ("loss", (("runs/train/plots/train.csv", "loss"), ("runs/train/plots/val.csv", "val_loss"))),
                ("learning_rate", (("runs/train/plots/train.csv", "lr"),)),
                ("grad_norm", (("runs/train/plots/train.csv", "grad_norm"),)),
                ("throughput", (("runs/train/plots/train.csv", "tokens_per_s"),)),
            ),
            report=("{name}.json", "plots/{name}.csv"),
            multithreaded=True,
            launches=True,
            reads_checkpoint="model",
        ),
        _EVALUATE,
        Stage(
            "sft_data",
            "frontier.finetune.sft_data:build_sft_pairs",
            "build prompt/response pairs for the fine-tune demo",
            (
                Flag("data", "prepared documents directory", "data/prepared"),
                Flag("out", "output directory", "data/sft"),
            ),
            deps=("data/prepared",),
            outs=("data/sft",),
            params=("finetune",),
        ),
        Stage(
            "finetune",
            "frontier.finetune.run:finetune",
            "fine-tune a model on prompt/response pairs (finetune.method: full, lora, qlora)",
            (
                Flag("model", "base Hugging Face model directory", "runs/train/model"),
                Flag("data", "fine-tune data directory", "data/sft"),
                Flag("out", "output directory", "runs/finetune"),
                Flag("checkpoints", _CHECKPOINTS, "checkpoints/finetune"),
            ),
            deps=("runs/train", "data/sft"),
            outs=("runs/finetune",),
            params=("seed", "kernels", "optimizer", "schedule", "engine", "finetune", *LAUNCH_LAYOUT),
            metrics=("runs/finetune/metrics.json", "runs/finetune/speed.json"),
            plots=(
                (
                    "finetune_loss",
                    (("runs/finetune/plots/train.csv", "loss"), ("runs/finetune/plots/val.csv", "val_loss")),
                ),
            ),
            report=("{name}.json",),
            multithreaded=True,
            launches=True,
        ),
        _MERGE,
        Stage(
            "preference_data",
            "frontier.finetune.preference_demo:build_preference_pairs",
            "build prompt/chosen/rejected pairs for the preference demo (a docstring: its body over its first line)",
            (
                Flag("data", "fine-tune data directory (prompt/response pairs)", "data/sft"),
                Flag("out", "output directory", "data/preference"),
            ),
            deps=("data/sft",),
            outs=("data/preference",),
            params=("preference.demo_train_pairs", "preference.demo_heldout_pairs", "preference.demo_max_prompt_chars"),
        ),
        Stage(
            "preference",
            "frontier.finetune.preference:preference",
            "DPO or ORPO preference tuning on prompt/chosen/rejected pairs (preference.loss; method full, lora, qlora)",
            (
                Flag("model", "the SFT'd Hugging Face model directory", "runs/merged"),
                Flag("data", "preference data directory (train.jsonl, heldout.jsonl)", "data/preference"),
                Flag("out", "output directory", "runs/preference"),
                Flag("checkpoints", _CHECKPOINTS + "; holds the reference log-probs cache", "checkpoints/preference"),
            ),
            deps=("runs/merged", "data/preference"),
            outs=("runs/preference",),
            params=("seed", "kernels", "optimizer", "schedule", "engine", "preference", *LAUNCH_LAYOUT),
            metrics=("runs/preference/metrics.json", "runs/preference/speed.json"),
            plots=(
                (
                    "preference_loss",
                    (("runs/preference/plots/train.csv", "loss"), ("runs/preference/plots/val.csv", "val_loss")),
                ),
                (
                    "preference_rewards",
                    (
                        ("runs/preference/plots/preference.csv", "margins"),
                        ("runs/preference/plots/preference.csv", "accuracy"),
                    ),
                ),
            ),
            report=("{name}.json",),
            multithreaded=True,
            launches=True,
        ),
        _MERGE.on_paths(
            "merge_preference",
            {"adapter": "runs/preference", "out": "runs/merged_preference"},
            deps=("runs/preference",),
            outs=("runs/merged_preference",),
        ),
        # Run by hand on any model and set (the evaluate stages score pass@k on a subset: evaluate.passk.in_evaluate)
        Stage(
            "passk",
            "frontier.eval.passk:run_passk",
            "pass@k in a sandbox on HumanEval (shipped; evaluate.passk.problems) or a HumanEval/MBPP-format file",
            (
                Flag("model", "Hugging Face model directory"),
                Flag("out", "output directory"),
                Flag("problems", "'humaneval' or a problems JSONL (default: evaluate.passk.problems)", required=False),
            ),
            params=("seed", "evaluate"),
            in_pipeline=False,
        ),
        _EVALUATE.on_paths(
            "evaluate_finetuned",
            {"model": "runs/merged", "out": "runs/eval_finetuned"},
            deps=("runs/merged", "data/tokens", "data/prepared"),
            outs=("runs/eval_finetuned",),
            metrics=("runs/eval_finetuned/metrics.json",),
        ),
        _EVALUATE.on_paths(
            "evaluate_preference",
            {"model": "runs/merged_preference", "out": "runs/eval_preference"},
            deps=("runs/merged_preference", "data/tokens", "data/prepared"),
            outs=("runs/eval_preference",),
            metrics=("runs/eval_preference/metrics.json",),
        ),
        Stage(
            "report",
            "frontier.report.build:build_report",
            "HTML report with curves, metrics, samples and config",
            (
                Flag("train", "train run directory", "runs/train"),
                Flag("eval", "evaluate output directory", "runs/eval"),
                Flag("finetune", "finetune output directory", "runs/finetune", required=False),
                Flag(
                    "eval_finetuned",
                    "evaluate output directory of the fine-tuned model",
                    "runs/eval_finetuned",
                    required=False,
                ),
                Flag("preference", "preference output directory", "runs/preference", required=False),
                Flag(
                    "eval_preference",
                    "evaluate output directory of the preference-tuned model",
                    "runs/eval_preference",
                    required=False,
                ),
                Flag("out", "output directory", "reports"),
            ),
            deps=(
                "runs/train",
                "runs/eval",
                "runs/finetune",
                "runs/eval_finetuned",
                "runs/preference",
                "runs/eval_preference",
            ),
            outs=("reports",),
            params=("report",),
            report=("{name}.html", "{name}.png"),
        ),
    ]
)
# The pipeline graph: a Snakemake rule and a dvc.yaml stage each.
STAGES: dict[str, Stage] = {name: stage for name, stage in ALL_STAGES.items() if stage.in_pipeline}


def command(stage: Stage, params_file: str = PARAMS_FILE) -> str:
    """The shell command of `stage`, as DVC runs it (Snakemake appends ``--workers {threads}``
    to parallel stages; the worker count never changes a stage's output)."""
    params = ["--params", params_file] if stage.params else []
    return " ".join(["frontier", stage.subcommand, *params, *stage.args])


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


def checkpoint_dir(stage: Stage, params: dict[str, Any]) -> str | None:
    """The local model directory `stage` reads by `params` (as a dict), or None."""
    from frontier.config.data import tokenizer_source

    if stage.reads_checkpoint == "tokenizer":
        tok = params["tokenizer"]
        return tokenizer_source(tok["kind"], tok["path"], params["model"]["init_from"])
    return params["model"]["init_from"] if stage.reads_checkpoint == "model" else None


def stage_deps(stage: Stage, params: dict[str, Any] | None = None) -> list[str]:
    """What `stage` reads: its declared deps, and the files it reads of a model directory `params` name (each
    file: a file rewritten in place leaves its directory's date alone, and Snakemake compares dates)."""
    directory = checkpoint_dir(stage, params) if params is not None else None
    if directory is None:
        return list(stage.deps)
    from frontier.config.data import TEMPLATES_DIR, TOKENIZER_FILES

    root = Path(directory).expanduser()
    if not root.is_dir():
        return [*stage.deps, str(root)]  # missing: Snakemake and DVC name it; the stage says what it expected

    def visible(path: Path) -> bool:  # a hub cache's bookkeeping, an editor's files: no input
        return not any(part.startswith(".") for part in path.relative_to(root).parts)

    if stage.reads_checkpoint == "tokenizer":
        files = [root / name for name in TOKENIZER_FILES] + sorted((root / TEMPLATES_DIR).glob("*"))
    else:
        files = sorted(filter(visible, root.rglob("*")))
    return [*stage.deps, *(str(f) for f in files if f.is_file())]


def check_dvc_deps(stage: Stage, params: Any, dvc_file: str = "dvc.yaml") -> None:
    """Under `dvc repro`, refuse to run a stage whose dvc.yaml entry lacks the model files it reads (dvc.yaml is
    generated, and only `frontier dvc-yaml` reads params.yaml's model.init_from): without them DVC would not
    rerun it when the checkpoint changes. `params`: Params."""
    import os

    import yaml

    from frontier.config import to_dict
    from frontier.errors import ConfigError

    if os.environ.get("DVC_STAGE", "").rpartition(":")[2] != stage.name:
        return
    params = to_dict(params)
    if checkpoint_dir(stage, params) is None:
        return
    try:
        declared = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8"))["stages"][stage.name].get("deps", [])
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return  # not our dvc.yaml: DVC itself reports what is wrong with it
    missing = [d for d in stage_deps(stage, params) if d not in declared]
    if missing:
        raise ConfigError(
            f"{dvc_file}: stage {stage.name} does not list {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f" as a dependency (it reads {checkpoint_dir(stage, params)}), so DVC would not rerun it when that "
            "checkpoint changes; run `frontier dvc-yaml` to write them in, then `dvc repro` again"
        )


def dvc_yaml(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dvc.yaml document for all stages (params per key, metrics and plots declared); with `params` (as a
    dict), the files of the model directory they name are deps of the stages that read it."""
    from frontier.config import section_keys

    stages: dict[str, Any] = {}
    for stage in STAGES.values():
        entry: dict[str, Any] = {"cmd": command(stage)}
        deps = stage_deps(stage, params)
        if deps:
            entry["deps"] = deps
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


def render_dvc_yaml(params: dict[str, Any] | None = None) -> str:
    import yaml

    header = "# Generated by `frontier dvc-yaml` from frontier/pipeline.py: edit there, then regenerate.\n"
    return header + yaml.safe_dump(dvc_yaml(params), sort_keys=False, width=120)
