"""Two CPU ranks from inside the pipeline: the same `train` rule / dvc stage, launch: params only.

`snakemake --cores 2 train --config 'launch={nproc_per_node: 2}'` and `dvc repro train` with
launch.nproc_per_node: 2 in params.yaml start both ranks themselves (gloo); their per-step losses
equal one rank's at the same global batch (2 ranks x micro 2 = 1 rank x micro 4).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.workflow.test_end_to_end import TINY, _project, _run, _snakemake

pytestmark = pytest.mark.slow


def _train_losses(root: Path) -> list[float]:
    with open(root / "runs" / "train" / "plots" / "train.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _world_size(root: Path) -> int:
    return json.loads((root / "runs" / "train" / "metrics.json").read_text())["world_size"]


def _forget_training(root: Path) -> None:
    """Drop the trained run and its checkpoints (otherwise the next run would resume it, not retrain)."""
    shutil.rmtree(root / "runs" / "train")
    shutil.rmtree(root / "checkpoints" / "train")


def _assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)


def test_two_ranks_through_snakemake_and_dvc_match_one(tmp_path: Path) -> None:
    root = _project(tmp_path, TINY)
    two = "launch={nproc_per_node: 2}", f"train={{micro_batch_size: {TINY['train']['micro_batch_size'] // 2}}}"
    _snakemake(root, "train", "--config", *two)
    assert _world_size(root) == 2
    assert "starting 2 rank(s)" in (root / "logs" / "train.log").read_text()
    two_ranks = _train_losses(root)

    _forget_training(root)
    _snakemake(root, "train")  # params.yaml as it is: one rank, micro-batch 4
    assert _world_size(root) == 1
    _assert_close(_train_losses(root), two_ranks)

    # dvc repro: the same stage command, two ranks from params.yaml
    _forget_training(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["launch"]["nproc_per_node"] = 2
    params["train"]["micro_batch_size"] //= 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "repro", "train"], root)
    assert _world_size(root) == 2
    _assert_close(_train_losses(root), two_ranks)
