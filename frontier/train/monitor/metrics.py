"""Throughput and MFU (the metrics files every stage writes: frontier.utils.metrics_files).

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices), with the model FLOPs per
token from frontier.model.flops (6N + 12 L H S). Peaks are dense numbers from the vendors' data
sheets, by precision (frontier.utils.gpu_peaks); unknown devices (and every CPU) have no peak, so MFU is
None and only the achieved FLOP/s is reported (``engine.monitor.peak_tflops`` supplies one).
"""

from __future__ import annotations

import torch

from frontier.utils.gpu_peaks import peak_tflops


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Per-device peak FLOP/s for `precision` (fp32 | bf16 | fp16), or None when unknown.

    The figures and the name matching are frontier.utils.gpu_peaks's (shared with `frontier env`).
    """
    if device.type != "cuda":
        return None
    tflops = peak_tflops(torch.cuda.get_device_name(device), precision)
    return tflops * 1e12 if tflops else None


def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float | None, devices: int) -> float | None:
    if not peak_per_device or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * devices)
