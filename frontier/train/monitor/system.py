"""A background thread sampling system metrics: CPU, RAM, disk (psutil) and GPUs (NVML) when present.

Each sample is a flat dict (``cpu_pct``, ``ram_pct``, ``disk_pct``, ``rss_gb``, ``gpu0_util_pct``,
``gpu0_memory_pct``, ``gpu0_temperature_c``, ``gpu0_power_w``, ...) handed to a callback, which
writes it to TensorBoard and runs the alert rules.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("frontier.train")


def _nvml() -> Any:
    """The initialised pynvml module, or None without NVIDIA GPUs / nvidia-ml-py."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # ImportError, or NVMLError when there is no driver
        return None


class SystemMonitor:
    def __init__(self, interval_s: float, disk_path: Path, callback: Callable[[dict[str, float]], None]) -> None:
        self.interval_s = interval_s
        self.disk_path = disk_path
        self.callback = callback
        self.latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = _nvml()
        self._process = psutil.Process()
        psutil.cpu_percent(None)  # the first reading is meaningless; prime it

    def sample(self) -> dict[str, float]:
        vm = psutil.virtual_memory()
        out = {
            "cpu_pct": psutil.cpu_percent(None),
            "ram_pct": vm.percent,
            "rss_gb": self._process.memory_info().rss / 2**30,
        }
        try:
            out["disk_pct"] = psutil.disk_usage(str(self.disk_path)).percent
        except OSError:
            pass
        if self._nvml is not None:
            out.update(self._gpu_sample())
        return out

    def _gpu_sample(self) -> dict[str, float]:
        nv = self._nvml
        out: dict[str, float] = {}
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                out[f"gpu{i}_util_pct"] = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                out[f"gpu{i}_memory_pct"] = 100.0 * mem.used / max(mem.total, 1)
                out[f"gpu{i}_temperature_c"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
                out[f"gpu{i}_power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
        except Exception as exc:  # a GPU that stops answering must not kill training
            log.debug("NVML sample failed: %s", exc)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.latest = self.sample()
                self.callback(self.latest)
            except Exception as exc:  # monitoring is best effort
                log.debug("system metrics sample failed: %s", exc)

    def start(self) -> SystemMonitor:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="frontier-system-metrics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
