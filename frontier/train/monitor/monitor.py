"""What a run shows while it runs: progress bar, log lines, TensorBoard, live CSVs, system metrics, profiler.

Live outputs go to ``<checkpoints_dir>/logs/`` (they must survive an interruption and continue
on resume; the stage's out_dir is written only at the end): ``tb/`` (TensorBoard; on resume the
events after the checkpoint's step are purged), ``train.csv`` / ``val.csv`` (rewritten from the
checkpoint's history on resume, then appended), ``alerts.jsonl``, ``profile/`` (chrome traces).
Rank 0 writes everything except profiler traces (one per rank).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from frontier.config.monitor import AlertsConfig, MonitorConfig, ProfileConfig
from frontier.data.progress import eta
from frontier.train.checkpoint.state import TrainerState
from frontier.train.launch.distributed import DistInfo
from frontier.train.monitor.alerts import Alerts
from frontier.train.monitor.system import SystemMonitor
from frontier.train.monitor.trackers import open_trackers
from frontier.utils.atomic import atomic_file, open_append_nofollow

log = logging.getLogger("frontier.train")

TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens_per_s")
VAL_FIELDS = ("step", "val_loss")


def write_csv(path: Path, fields: tuple[str, ...], rows: list[dict[str, Any]], mode: str = "w") -> None:
    """A whole CSV file with its header (mode "w": atomically, replacing the name), or rows appended (mode "a":
    never through a link or a hard-linked file, frontier.utils.atomic.open_append_nofollow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opened = atomic_file(path, newline="") if mode == "w" else open_append_nofollow(path, newline="")
    with opened as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if mode == "w":
            writer.writeheader()
        writer.writerows(rows)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class RunMonitor:
    """What rank 0 shows and writes while a run of `max_steps` steps goes (per `settings`, engine.monitor), its
    alerts (per `alerts`, engine.alerts) and the profiler window (`profile`: the stage's own, train.profile)."""

    def __init__(
        self,
        settings: MonitorConfig,
        alerts: AlertsConfig,
        logs_dir: Path,
        info: DistInfo,
        state: TrainerState,
        *,
        max_steps: int,
        profile: ProfileConfig | None = None,
    ) -> None:
        self.max_steps = max_steps
        self.profile = profile or ProfileConfig()  # None: no profiler window
        self.dir = logs_dir
        self.info = info
        self.main = info.is_main
        self.step = state.step
        self.alerts = Alerts(alerts, logs_dir / "alerts.jsonl" if self.main else None)
        self.writer: Any = None
        self.bar: Any = None
        self.system: SystemMonitor | None = None
        self.profiler: Any = None
        self._postfix: dict[str, str] = {}
        self._started, self._first_step = time.monotonic(), state.step  # ETA from this segment's pace
        if self.main:
            write_csv(logs_dir / "train.csv", TRAIN_FIELDS, state.train_rows)
            write_csv(logs_dir / "val.csv", VAL_FIELDS, state.val_rows)
            if settings.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(logs_dir / "tb"), purge_step=state.step or None)
            if settings.progress_bar and sys.stderr.isatty():  # in a log file, the log lines say it all
                from tqdm import tqdm

                self.bar = tqdm(total=max_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
            if settings.system_every_s > 0:
                self.system = SystemMonitor(settings.system_every_s, logs_dir, self._on_system).start()
        self.trackers = open_trackers(settings, state.run_id, logs_dir, resume=state.step > 0) if self.main else []

    def _on_system(self, sample: dict[str, float]) -> None:
        step = self.step
        if self.writer is not None:
            for key, value in sample.items():
                self.writer.add_scalar(f"system/{key}", value, step)
        self.alerts.check_system(step, sample)

    # -- per step ----------------------------------------------------------------------------

    def begin_step(self, step: int) -> None:
        self.step = step
        prof = self.profile
        if prof.num_steps and step == prof.start_step and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()
        elif self.profiler is not None and step >= prof.start_step + prof.num_steps:
            self._stop_profiler()

    def _stop_profiler(self) -> None:
        if self.profiler is None:
            return
        self.profiler.__exit__(None, None, None)
        path = self.dir / "profile" / f"trace_rank{self.info.rank:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.profiler.export_chrome_trace(str(path))
        self.profiler = None
        log.info("profiler trace written to %s", path)

    def end_step(self, step: int, loss: float, grad_norm: float | None) -> None:
        """After every step (all ranks hold the same values): alerts and the progress bar."""
        if not self.main:
            return
        self.alerts.check_step(step, loss, grad_norm)
        if self.bar is not None:
            self.bar.update(1)
            self._postfix["loss"] = f"{loss:.4f}"
            self.bar.set_postfix(self._postfix, refresh=False)

    def log_train(self, row: dict[str, Any], extra: dict[str, float | None]) -> None:
        """A train.csv row (also TensorBoard and a log line); `extra` holds MFU, memory, loss scale."""
        if not self.main:
            return
        write_csv(self.dir / "train.csv", TRAIN_FIELDS, [row], mode="a")
        step = row["step"]
        if row.get("tokens_per_s"):
            self.alerts.check_throughput(step, row["tokens_per_s"])
            self._postfix["tok/s"] = f"{row['tokens_per_s']:,.0f}"
        scalars = {f"train/{k}": row[k] for k in ("loss", "lr", "grad_norm") if _finite(row.get(k))}
        scalars |= {f"perf/{k}": v for k, v in {"tokens_per_s": row.get("tokens_per_s"), **extra}.items() if _finite(v)}
        self._scalars(scalars, step)
        parts = [f"step {step}/{self.max_steps}", f"loss {row['loss']:.4f}", f"lr {row['lr']:.3g}"]
        if row.get("grad_norm") is not None:
            parts.append(f"grad_norm {row['grad_norm']:.3g}")
        if row.get("tokens_per_s"):
            parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
        if extra.get("mfu") is not None:
            parts.append(f"MFU {100 * extra['mfu']:.1f}%")
        seconds = time.monotonic() - self._started
        parts.append(f"ETA {eta(step - self._first_step, self.max_steps - self._first_step, seconds)}")
        self._print(" | ".join(parts))

    def log_val(self, step: int, val_loss: float, best: float | None) -> None:
        if not self.main:
            return
        write_csv(self.dir / "val.csv", VAL_FIELDS, [{"step": step, "val_loss": val_loss}], mode="a")
        self._scalars({"val/loss": val_loss} if _finite(val_loss) else {}, step)
        self._print(f"step {step}: val loss {val_loss:.4f} (best {best:.4f})" if best is not None else
                    f"step {step}: val loss {val_loss:.4f}")  # fmt: skip

    def _scalars(self, values: dict[str, float], step: int) -> None:
        """The same scalars to TensorBoard and every tracker."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        for tracker in self.trackers:
            tracker.log(values, step)

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            log.info("%s", line)

    def close(self) -> None:
        self._stop_profiler()
        if self.system is not None:
            self.system.stop()
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        if self.bar is not None:
            self.bar.close()
