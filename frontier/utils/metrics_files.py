"""A stage's results as metrics.json / speed.json / run.json: what DVC's metrics views and the report read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frontier.utils.atomic import write_json

# Measured speed: differs between two runs of the same inputs, so it lives in speed.json, apart from
# metrics.json (results), which is byte-identical for the same inputs on the same machine.
SPEED_KEYS = ("tokens_per_s", "flops_per_s", "mfu", "train_time_s", "wall_time_s")
METRIC_FILES = ("metrics.json", "speed.json", "run.json")


def _is_number(value: Any) -> bool:
    """A number, a missing one (None), or a mapping of those (per-source figures)."""
    if isinstance(value, dict):
        return all(_is_number(v) for v in value.values())
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    """Split a stage's results three ways, so DVC's metrics views hold numbers only:
    metrics.json (numeric results), speed.json (SPEED_KEYS), run.json (what describes the run:
    stop reason, device, precision, LoRA settings...)."""
    speed = {k: v for k, v in metrics.items() if k in SPEED_KEYS}
    numbers = {k: v for k, v in metrics.items() if k not in SPEED_KEYS and _is_number(v)}
    described = {k: v for k, v in metrics.items() if k not in speed and k not in numbers}
    write_json(directory / "metrics.json", numbers)
    for name, part in (("speed.json", speed), ("run.json", described)):
        if part:  # a stage that measures no speed writes no speed.json
            write_json(directory / name, part)


def read_metrics(directory: Path) -> dict[str, Any]:
    """The three files of write_metrics merged back (those present)."""
    out: dict[str, Any] = {}
    for name in METRIC_FILES:
        path = Path(directory) / name
        if path.is_file():
            out.update(json.loads(path.read_text(encoding="utf-8")))
    return out
