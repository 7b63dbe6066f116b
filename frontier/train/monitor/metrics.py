"""Throughput and MFU.

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices), with the model FLOPs per
token from frontier.model.flops (6N + 12 L H S). Peaks are dense tensor-core numbers from the
vendors' data sheets, by precision; unknown devices (and every CPU) have no peak, so MFU is
None and only the achieved FLOP/s is reported (``train.monitor.peak_tflops`` supplies one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# substring of torch.cuda.get_device_name() -> (bf16/fp16 peak, fp32 peak) in FLOP/s, dense
_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10", 125e12, 31.2e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("V100", 125e12, 15.7e12),
)


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Per-device peak FLOP/s for `precision` (fp32 | bf16 | fp16), or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, single in _PEAKS:
        if key in name:
            return single if precision == "fp32" else half
    return None


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
    from frontier.utils.atomic import write_json

    speed = {k: v for k, v in metrics.items() if k in SPEED_KEYS}
    numbers = {k: v for k, v in metrics.items() if k not in SPEED_KEYS and _is_number(v)}
    described = {k: v for k, v in metrics.items() if k not in speed and k not in numbers}
    write_json(directory / "metrics.json", numbers)
    for name, part in (("speed.json", speed), ("run.json", described)):
        if part:  # a stage that measures no speed writes no speed.json
            write_json(directory / name, part)


def read_metrics(directory: Path) -> dict[str, Any]:
    """The three files of write_metrics merged back (those present)."""
    import json

    out: dict[str, Any] = {}
    for name in METRIC_FILES:
        path = Path(directory) / name
        if path.is_file():
            out.update(json.loads(path.read_text(encoding="utf-8")))
    return out


def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float | None, devices: int) -> float | None:
    if not peak_per_device or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * devices)
