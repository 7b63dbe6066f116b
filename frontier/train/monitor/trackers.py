"""Experiment trackers beside TensorBoard and the CSV files: DVCLive, MLflow, Weights & Biases (opt-in).

``engine.monitor.trackers: [dvclive, mlflow, wandb]`` (any subset; none by default). Each gets the
same scalars as TensorBoard, keyed ``train/loss``, ``train/lr``, ``train/grad_norm``, ``perf/...``,
``val/loss``, at the optimizer step. None of them needs a network: DVCLive writes files DVC reads
(``dvc exp show``, ``dvc plots``), MLflow a local file store (or ``mlflow_tracking_uri``), W&B an
offline run directory (``wandb_mode: offline``; ``wandb sync`` uploads it later). Only rank 0 logs.
A tracker whose package is missing is a one-line ConfigError at start, not a crash mid-run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from frontier.errors import ConfigError

if TYPE_CHECKING:
    from frontier.config.monitor import MonitorConfig

PACKAGES = {"dvclive": "dvclive", "mlflow": "mlflow", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _require(name: str) -> Any:
    try:
        return importlib.import_module(PACKAGES[name])
    except ImportError:
        raise ConfigError(
            f"engine.monitor.trackers: {name!r} needs the {PACKAGES[name]} package (pip install {PACKAGES[name]}, "
            "or install Frontier with its [trackers] extra); remove it from the list to train without it"
        ) from None


def contained_dir(configured: str, key: str) -> Path:
    """`configured` (relative: MonitorConfig.validate refuses an absolute path and '..') as a tracker directory
    that no planted link leads out of the workspace (the working directory), holding no link inside (the
    tracker rewrites its files by name). ConfigError naming the key if not."""
    directory = Path(configured)
    if directory.is_symlink():
        raise ConfigError(f"{key}: {directory} is a link to {os.readlink(directory)}; expected a directory "
                          "(remove the link, or name the directory itself)")  # fmt: skip
    real, base = os.path.realpath(directory), os.path.realpath(os.getcwd())
    if os.path.commonpath([real, base]) != base:
        raise ConfigError(f"{key}: {directory} resolves to {real}, outside the workspace {base} (a link on the way); "
                          "expected a directory inside it")  # fmt: skip
    if directory.is_dir():
        for dirpath, dirnames, filenames in os.walk(directory):  # links are listed, never entered
            for name in [*dirnames, *filenames]:
                if os.path.islink(os.path.join(dirpath, name)):
                    raise ConfigError(f"{key}: {os.path.join(dirpath, name)} is a link; the tracker's directory "
                                      "must hold plain files only (remove the link)")  # fmt: skip
    return directory


class DVCLiveTracker:
    def __init__(self, cfg: MonitorConfig, run_id: str, resume: bool) -> None:
        dvclive = _require("dvclive")
        # DVCLive declares its metrics and plots in <dir>/dvc.yaml, which DVC reads like any dvc.yaml. Never
        # the project's own dvc.yaml (DVCLive's default): that one is generated from frontier/pipeline.py.
        directory = contained_dir(cfg.dvclive_dir, "engine.monitor.dvclive_dir")
        self.live = dvclive.Live(str(directory), resume=resume, save_dvc_exp=False,
                                 dvcyaml=str(directory / "dvc.yaml"), report=None)  # fmt: skip
        self.live.log_param("run_id", run_id)

    def log(self, values: dict[str, float], step: int) -> None:
        self.live.step = step
        for key, value in values.items():
            self.live.log_metric(key, value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


class MLflowTracker:
    def __init__(self, cfg: MonitorConfig, run_id: str, logs_dir: Path) -> None:
        mlflow = _require("mlflow")
        self.mlflow = mlflow
        if cfg.mlflow_tracking_uri is None:  # MLflow 3 wants this opt-in for its (still supported) file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(cfg.mlflow_tracking_uri or (logs_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(cfg.project)
        found = mlflow.search_runs(
            experiment_names=[cfg.project], filter_string=f"tags.frontier_run_id = '{run_id}'", output_format="list"
        )
        # a resumed training run continues its MLflow run
        self.run = mlflow.start_run(run_id=found[0].info.run_id if found else None, run_name=run_id)
        mlflow.set_tag("frontier_run_id", run_id)

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker:
    def __init__(self, cfg: MonitorConfig, run_id: str, logs_dir: Path) -> None:
        wandb = _require("wandb")
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project, id=run_id, resume="allow", mode=cfg.wandb_mode, dir=str(logs_dir),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )  # fmt: skip

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(cfg: MonitorConfig, run_id: str, logs_dir: Path, resume: bool) -> list[Tracker]:
    """The trackers `cfg.trackers` names (a MonitorConfig), opened for this run."""
    out: list[Tracker] = []
    for name in cfg.trackers:
        if name == "dvclive":
            out.append(DVCLiveTracker(cfg, run_id, resume))
        elif name == "mlflow":
            out.append(MLflowTracker(cfg, run_id, logs_dir))
        elif name == "wandb":
            out.append(WandbTracker(cfg, run_id, logs_dir))
    return out
