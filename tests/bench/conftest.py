"""Shared benchmark fixtures: the hardware ceilings, measured in the same run as the kernels.

Every GPU benchmark reports its achieved GB/s or TFLOP/s as a fraction of these ceilings
(a large device-to-device copy; a large bf16 matmul), never of a datasheet figure.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch


def _median_ms(fn: Any) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))


def _copy_gbps(n: int) -> float:
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


@pytest.fixture(scope="session")
def device_limits() -> dict[str, float]:
    """Measured ceilings of the current GPU: copy GB/s (bytes read + written) and bf16 matmul TFLOP/s."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    copy_gbps = _copy_gbps(1 << 28)  # 1 GiB of fp32: far larger than L2
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    mm_ms = _median_ms(lambda: a @ b)
    tflops = 2 * m**3 / (mm_ms * 1e-3) / 1e12
    return {"copy_gbps": copy_gbps, "bf16_tflops": tflops, "device": torch.cuda.get_device_name()}


def record(benchmark: Any, limits: dict[str, float], *, bytes_moved: float = 0.0, flops: float = 0.0) -> None:
    """Attach achieved rates and fractions of the measured ceilings to a pytest-benchmark result."""
    seconds = benchmark.stats.stats.median
    info = benchmark.extra_info
    info["device"] = limits.get("device", "")
    if bytes_moved:
        gbps = bytes_moved / seconds / 1e9
        info["GB/s"] = round(gbps, 1)
        info["frac_copy_bw"] = round(gbps / limits["copy_gbps"], 3)
    if flops:
        tflops = flops / seconds / 1e12
        info["TFLOP/s"] = round(tflops, 1)
        info["frac_bf16_mm"] = round(tflops / limits["bf16_tflops"], 3)
