"""Opt-in trackers, each read back by its own tool, offline: DVCLive by DVC, MLflow by its client, W&B by its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from frontier.errors import ConfigError
from frontier.train.run import train
from tests.train.helpers import REPO, params


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("tracked")
    before = (REPO / "dvc.yaml").read_text()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=root, check=True)
    p = params(
        "engine.monitor.trackers=[dvclive, mlflow, wandb]", "engine.monitor.dvclive_dir=dvclive",
        "engine.monitor.project=tiny", "train.eval_every=3", "train.eval_batches=1",
    )  # fmt: skip
    cwd = os.getcwd()
    os.chdir(root)  # a stage runs in its project's root: DVCLive finds that DVC repository
    try:
        metrics = train(p, corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    finally:
        os.chdir(cwd)
    assert (REPO / "dvc.yaml").read_text() == before, "a tracker wrote into the project's generated dvc.yaml"
    return root, metrics


def test_dvclive_is_read_by_dvc(tracked) -> None:
    root, metrics = tracked
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    text = json.dumps(shown)
    assert "dvclive/metrics.json" in text and "loss" in text
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "dvclive/plots/metrics/train/loss.tsv" in plots
    rows = (root / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss"] and [int(r.split("\t")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]


def test_mlflow_file_store_is_read_by_its_client(tracked) -> None:
    import mlflow

    root, metrics = tracked
    mlflow.set_tracking_uri((root / "ckpt" / "logs" / "mlruns").as_uri())
    (run,) = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert run.data.tags["frontier_run_id"]
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [3, 6]


def test_wandb_offline_run_directory(tracked) -> None:
    root, metrics = tracked
    (run_dir,) = (root / "ckpt" / "logs" / "wandb").glob("offline-run-*")
    (events,) = run_dir.glob("run-*.wandb")  # W&B's record log, what `wandb sync` uploads
    data = events.read_bytes()
    for key in (b"train/loss", b"train/lr", b"train/grad_norm", b"perf/tokens_per_s", b"val/loss"):
        assert key in data, key


def test_a_tracker_whose_package_is_missing_is_one_line(tmp_path, corpus, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    with pytest.raises(ConfigError, match=r"engine.monitor.trackers: 'wandb' needs the wandb package"):
        train(
            params("engine.monitor.trackers=[wandb]"), corpus.tokens, corpus.tokenizer, tmp_path / "o", tmp_path / "c"
        )
