"""Continued pretraining through the pipeline, as a user runs it: only model.init_from set.

A tiny Qwen2 checkpoint (more embedding rows than tokens, as real Qwen ones) continues through `snakemake ...
train --config model={init_from: DIR}`: the tokenizer stage copies the model's own tokenizer unchanged, train
says the vocabulary line once and trains; a run killed after its first checkpoint continues to the same losses;
a changed checkpoint reruns what reads it (weights: train; tokenizer: from the tokenizer stage on). `frontier
dvc-yaml` lists the checkpoint's files in dvc.yaml, and `dvc repro train` continues a run too (a stage run by DVC
refuses a dvc.yaml that does not list them).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from frontier.config import load_params
from frontier.errors import ConfigError
from frontier.pipeline import STAGES, check_dvc_deps, stage_deps
from tests.model.families import build_checkpoint
from tests.train.helpers import losses
from tests.workflow.helpers import dvc_stages, snakemake_jobs
from tests.workflow.test_end_to_end import _project, _run, _snakemake

EXTRA_ROWS = 3
# A short budget on a few standard-library files; nothing about the model: the checkpoint decides it.
BUDGET = {
    "prepare": {"max_docs": 30},
    "train": {"max_steps": 6, "micro_batch_size": 2, "seq_len": 32, "eval_every": 0, "eval_batches": 1,
              "log_every": 1, "checkpoint": {"every_steps": 3}},
    "schedule": {"warmup_steps": 2},  # the default 30 is longer than this 6-step run (a one-line error)
    "engine": {"monitor": {"progress_bar": False, "system_every_s": 0}},
}  # fmt: skip


def _init_from(model_dir: Path) -> list[str]:
    return ["--config", f"model={{init_from: {model_dir}}}"]


def _planned(root: Path, model_dir: Path) -> set[str]:
    out = _snakemake(root, "-n", "train", *_init_from(model_dir))
    return snakemake_jobs(out.stdout + out.stderr) & set(STAGES)


def _rewrite(path: Path) -> None:
    """Change `path` in place, as a new save of the checkpoint does (its directory keeps its date; a file only
    dated anew is not a change: Snakemake compares the checksum of a small file too)."""
    path.write_text(path.read_text() + "\n")


def _dvc_status(root: Path) -> str:
    return _run([sys.executable, "-m", "dvc", "status", "train"], root).stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_continued_pretraining_runs_resumes_and_reruns_through_snakemake_and_dvc(tmp_path: Path) -> None:
    model_dir = build_checkpoint("qwen2", tmp_path / "qwen2", extra_rows=EXTRA_ROWS)
    root = _project(tmp_path, BUDGET)
    out = _snakemake(root, "train", *_init_from(model_dir))
    assert snakemake_jobs(out.stdout + out.stderr) & set(STAGES) == {"prepare", "tokenizer", "tokenize", "train"}

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # the model's own, unchanged
        assert (root / "data/tokenizer" / name).read_bytes() == (model_dir / name).read_bytes(), name
    log = (root / "logs/train.log").read_text()
    assert log.count("embedding rows for a") == 1 and f"the {EXTRA_ROWS} rows above it are never an input" in log
    straight = losses(root / "runs/train")
    assert len(straight) == 6 and straight[-1] < straight[0]

    # DVC: params.yaml names the checkpoint; `frontier dvc-yaml` writes its files in as deps; `dvc commit` takes
    # the data Snakemake made as it is (train's output stays out of DVC's cache: repro would restore it).
    params = (root / "params.yaml").read_text().replace("init_from: null", f"init_from: {model_dir}", 1)
    (root / "params.yaml").write_text(params)
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run(["frontier", "dvc-yaml"], root)
    dvc_yaml = (root / "dvc.yaml").read_text()
    assert f"    - {model_dir}/model.safetensors.index.json\n" in dvc_yaml
    assert f"    - {model_dir}/tokenizer.json\n" in dvc_yaml
    _run([sys.executable, "-m", "dvc", "commit", "-f", "-q", "--with-deps", "tokenize"], root)

    # Killed after its step-3 checkpoint, before writing its output: `dvc repro train` continues it, exactly.
    shutil.rmtree(root / "checkpoints/train/step_00000006")
    shutil.rmtree(root / "runs/train")
    out = _run([sys.executable, "-m", "dvc", "repro", "train"], root)
    assert dvc_stages(out.stdout) == {"train"} and "resumed from" in out.stdout + out.stderr
    assert losses(root / "runs/train") == straight
    assert "up to date" in _dvc_status(root)
    assert _planned(root, model_dir) == set()  # Snakemake agrees: nothing to do

    # The checkpoint's files are deps of the stages reading them. A file rewritten in place (its directory's date
    # unchanged): train, not the tokenizer; a new tokenizer: everything from the tokenizer stage on.
    _rewrite(model_dir / "generation_config.json")
    status = _dvc_status(root)
    assert "train:" in status and "generation_config.json" in status and "tokenizer:" not in status
    assert _planned(root, model_dir) == {"train"}
    _rewrite(model_dir / "tokenizer.json")
    assert _planned(root, model_dir) == {"tokenizer", "tokenize", "train"}


def test_stage_deps_name_the_checkpoint_files_each_stage_reads(tmp_path: Path) -> None:
    model_dir = build_checkpoint("phi2", tmp_path / "phi2")
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "lock").write_text("")  # a hub cache's bookkeeping is no input
    params = {"model": {"init_from": str(model_dir)}, "tokenizer": {"kind": "bpe", "path": None}}
    names = {Path(p).name for p in stage_deps(STAGES["tokenizer"], params)}
    assert names == {"prepared", "tokenizer.json", "tokenizer_config.json"}
    train = {Path(p).name for p in stage_deps(STAGES["train"], params)}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json"} <= train
    assert "lock" not in train and any(n.startswith("model-00001-of-") for n in train)
    assert stage_deps(STAGES["tokenize"], params) == list(STAGES["tokenize"].deps)  # reads no checkpoint
    params["model"]["init_from"] = None
    assert stage_deps(STAGES["train"], params) == list(STAGES["train"].deps)


def test_dvc_repro_refuses_a_dvc_yaml_without_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model_dir = build_checkpoint("gpt2", tmp_path / "gpt2")
    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(__file__).resolve().parents[2] / "dvc.yaml", tmp_path / "dvc.yaml")  # as committed
    params = load_params(None, [f"model.init_from={model_dir}"])
    check_dvc_deps(STAGES["train"], params)  # not under DVC: nothing to check
    monkeypatch.setenv("DVC_STAGE", "train")
    with pytest.raises(ConfigError) as err:
        check_dvc_deps(STAGES["train"], params)
    assert str(err.value).startswith("dvc.yaml: stage train does not list ") and "run `frontier dvc-yaml`" in str(
        err.value
    )
    monkeypatch.setenv("DVC_STAGE", "tokenize")
    check_dvc_deps(STAGES["tokenize"], params)  # reads no checkpoint
