"""Alert rules over training and system metrics -> alerts.jsonl lines and warning log lines.

Rules (thresholds in ``engine.alerts``; 0 turns a rule off):
  nan              the loss is NaN or infinite
  loss_spike       loss > loss_spike_factor x EMA of the loss
  grad_norm        grad norm > grad_norm_max (or non-finite)
  gpu_memory       GPU memory used > gpu_memory_pct percent
  gpu_temperature  GPU temperature > gpu_temperature_c
  throughput_drop  tokens/s (per logging window) < throughput_drop x EMA of tokens/s
The EMA rules stay quiet for `warmup_steps` steps while their average settles; a value that
fires a rule does not enter its EMA (a spike must not raise the bar for the next one).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from frontier.config.monitor import AlertsConfig
from frontier.utils.atomic import open_append_nofollow

log = logging.getLogger("frontier.train")


class Ema:
    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.value: float | None = None
        self.count = 0

    def update(self, x: float) -> None:
        self.value = x if self.value is None else self.beta * self.value + (1 - self.beta) * x
        self.count += 1


class Alerts:
    """Evaluates the rules; thread-safe (the system monitor reports from its own thread)."""

    def __init__(self, cfg: AlertsConfig, path: Path | None) -> None:
        self.cfg = cfg
        self.path = path
        self.loss_ema = Ema(cfg.ema_beta)
        self.tps_ema = Ema(cfg.ema_beta)
        self.fired: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _fire(self, step: int, rule: str, value: float, threshold: float, message: str) -> None:
        record = {"time": time.time(), "step": step, "rule": rule, "value": value, "threshold": threshold,
                  "message": message}  # fmt: skip
        with self._lock:
            self.fired.append(record)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open_append_nofollow(self.path) as f:  # never through a link planted mid-run
                    f.write(json.dumps(record, sort_keys=True) + "\n")
        log.warning("ALERT %s at step %d: %s", rule, step, message)

    def _ema_rule(self, ema: Ema, step: int, value: float, rule: str, factor: float, above: bool, what: str) -> None:
        settled = ema.value is not None and ema.count >= self.cfg.warmup_steps
        if factor > 0 and settled:
            bar = factor * ema.value  # type: ignore[operator]
            if (value > bar) if above else (value < bar):
                word = "above" if above else "below"
                self._fire(
                    step, rule, value, bar, f"{what} {value:.4g} is {word} {factor:g} x its EMA ({ema.value:.4g})"
                )
                return
        ema.update(value)

    def check_step(self, step: int, loss: float, grad_norm: float | None) -> None:
        if not math.isfinite(loss):
            self._fire(step, "nan", loss, 0.0, f"loss is {loss}; the step was skipped")
        else:
            self._ema_rule(self.loss_ema, step, loss, "loss_spike", self.cfg.loss_spike_factor, True, "loss")
        if grad_norm is not None and self.cfg.grad_norm_max > 0:
            if not math.isfinite(grad_norm) or grad_norm > self.cfg.grad_norm_max:
                self._fire(step, "grad_norm", grad_norm, self.cfg.grad_norm_max,
                           f"grad norm {grad_norm:.4g} exceeds {self.cfg.grad_norm_max:g}")  # fmt: skip

    def check_throughput(self, step: int, tokens_per_s: float) -> None:
        """Tokens/s averaged over a logging window (single steps are too noisy to judge)."""
        if tokens_per_s > 0:
            self._ema_rule(self.tps_ema, step, tokens_per_s, "throughput_drop", self.cfg.throughput_drop, False,
                           "tokens/s")  # fmt: skip

    def check_system(self, step: int, sample: dict[str, float]) -> None:
        for index_key, value in sample.items():
            if index_key.endswith("memory_pct") and index_key.startswith("gpu") and self.cfg.gpu_memory_pct > 0:
                if value > self.cfg.gpu_memory_pct:
                    self._fire(step, "gpu_memory", value, self.cfg.gpu_memory_pct,
                               f"{index_key} {value:.1f}% exceeds {self.cfg.gpu_memory_pct:g}%")  # fmt: skip
            if index_key.endswith("temperature_c") and self.cfg.gpu_temperature_c > 0:
                if value > self.cfg.gpu_temperature_c:
                    self._fire(step, "gpu_temperature", value, self.cfg.gpu_temperature_c,
                               f"{index_key} {value:.0f} C exceeds {self.cfg.gpu_temperature_c:g} C")  # fmt: skip
