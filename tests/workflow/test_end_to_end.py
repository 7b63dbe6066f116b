"""The real pipeline, end to end, on a tiny params override, through Snakemake (DVC: tests/workflow/test_reruns.py).

Checks what a user relies on: every stage runs; the same inputs give the same bits in a fresh directory; a
second run has nothing to do; changing only a train parameter reruns train and what follows it, not the data stages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from frontier.utils.metrics_files import read_metrics
from tests.workflow.helpers import REPO, stage_env, workspace

pytestmark = pytest.mark.slow

# A tiny run: a few dozen standard-library files, a small BPE, a 2-layer model, a handful of steps.
TINY = {
    "prepare": {"max_docs": 120},
    "tokenizer": {"vocab_size": 384},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 64},
    "train": {"max_steps": 12, "micro_batch_size": 4, "eval_every": 6, "eval_batches": 2, "log_every": 4},
    "schedule": {"warmup_steps": 2},
    # every model scored as by default (the example lm-eval task, HumanEval pass@k), on fewer problems and draws
    "evaluate": {
        "max_tokens": 4096,
        "batch_size": 4,
        "passk": {"max_problems": 2, "n": 2, "k": [1, 2], "sampling": {"max_new_tokens": 24}},
    },
    "finetune": {"max_steps": 4, "micro_batch_size": 2},
    "preference": {
        "max_steps": 4,
        "micro_batch_size": 2,
        "demo_train_pairs": 16,
        "demo_heldout_pairs": 4,
        "demo_max_prompt_chars": 80,
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _project(tmp_path: Path, overrides: dict) -> Path:
    """A copy of the workflow files with a tiny params.yaml, in its own directory."""
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    return workspace(tmp_path / "project", yaml.safe_dump(params, sort_keys=False))


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "snakemake", "--cores", "2", *args], root)


def _planned_jobs(root: Path) -> set[str]:
    """Rules Snakemake would run now (dry run)."""
    out = _snakemake(root, "-n", "--quiet", "rules").stdout
    jobs = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in {"job", "total"}:
            jobs.add(parts[0])
    return jobs


# Every stage's output directory, each holding params.resolved.yaml and provenance.json.
STAGE_OUTPUTS = (
    "data/prepared", "data/tokenizer", "data/tokens", "runs/train", "runs/eval", "data/sft",
    "runs/finetune", "runs/merged", "runs/eval_finetuned", "data/preference", "runs/preference",
    "runs/merged_preference", "runs/eval_preference", "reports",
)  # fmt: skip
# What must be byte-identical when the same inputs run again in a fresh directory (CPU).
SAME_BITS = (
    "data/prepared/train.jsonl", "data/tokenizer/tokenizer.json", "data/tokens/train/meta.json",
    "runs/train/model/model.safetensors", "runs/train/metrics.json", "runs/eval/metrics.json",
    "runs/finetune/adapter/adapter_model.safetensors", "runs/finetune/metrics.json", "runs/eval_finetuned/metrics.json",
    "data/preference/train.jsonl", "runs/preference/adapter/adapter_model.safetensors", "runs/preference/metrics.json",
    "runs/eval_preference/metrics.json",
)  # fmt: skip


def test_snakemake_pipeline_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    root = _project(tmp_path / "a", TINY)
    _snakemake(root)
    for out in ("data/prepared", "data/tokenizer", "data/tokens", "runs/train/model", "runs/eval", "reports"):
        assert (root / out).exists(), out
    metrics = json.loads((root / "runs/eval/metrics.json").read_text())
    assert metrics["bits_per_byte"] > 0 and metrics["unigram_bits_per_byte"] > 0
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for stage_dir in STAGE_OUTPUTS:
        record = json.loads((root / stage_dir / "provenance.json").read_text())
        assert record["git"]["commit"] == head and record["lock"]["matches"], stage_dir
        assert record["command"].startswith("frontier ") and record["packages"]["torch"], stage_dir
        if stage_dir not in ("runs/merged", "runs/merged_preference"):  # merge reads no parameters
            assert (root / stage_dir / "params.resolved.yaml").is_file(), stage_dir
    # The report shows the training machine's record (the train stage's), not the renderer's.
    train_record = json.loads((root / "runs/train/provenance.json").read_text())
    report = (root / "reports/report.html").read_text()
    assert "Training machine and environment" in report and train_record["created_utc"] in report
    assert "Pretrained vs fine-tuned vs preference-tuned on val" in report and "Training dynamics" in report
    # SFT -> DPO: the preference stage started from the SFT'd model and scored its held-out pairs before and after
    pref = read_metrics(root / "runs/preference")  # metrics.json and run.json
    assert pref["loss_kind"] == "dpo" and pref["steps"] == 4 and pref["heldout_pairs"] == 4
    assert pref["base_model"] == "../merged" and "tuned_heldout_accuracy" in pref
    assert "Preference tuning" in report and "preference-tuned" in report
    # every model scored the same way, side by side
    assert "Scores" in report and "frontier_python_syntax acc" in report
    for eval_dir in ("runs/eval", "runs/eval_finetuned", "runs/eval_preference"):
        scored = json.loads((root / eval_dir / "metrics.json").read_text())
        assert scored["harness"]["frontier_python_syntax"]["samples"] == 60, eval_dir
        ran = json.loads((root / eval_dir / "run.json").read_text())
        assert scored.get("passk", {}).get("problems") == 2 or "passk_skipped" in ran, eval_dir

    for log in (root / "logs").glob("*.log"):  # plain lines: no progress-bar frames, ours or libraries'
        assert "\r" not in log.read_text(errors="replace"), log.name

    # Snakemake's own report shows the tagged results.
    _snakemake(root, "--report", "smk-report.zip")
    with zipfile.ZipFile(root / "smk-report.zip") as archive:
        names = archive.namelist()
    shown = [n.rsplit("/", 1)[-1] for n in names]
    assert "report.html" in shown and "loss.png" in shown and shown.count("metrics.json") >= 3, names

    # Same inputs, same bits: the whole pipeline again in a fresh directory.
    (tmp_path / "b").mkdir()
    twin = _project(tmp_path / "b", TINY)
    _snakemake(twin)
    for rel in SAME_BITS:
        assert (root / rel).read_bytes() == (twin / rel).read_bytes(), f"{rel} differs between two identical runs"

    # Nothing to do on a second run.
    assert _planned_jobs(root) == set()

    # A train-only change reruns train and its descendants, not the data stages.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["max_steps"] += 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = _planned_jobs(root)
    assert "train" in planned and "evaluate" in planned and "report" in planned
    assert not planned & {"prepare", "tokenizer", "tokenize", "sft_data", "preference_data"}, planned
