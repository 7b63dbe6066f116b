"""Fused linear + cross-entropy benchmark: time and peak memory of the lm_head + loss, forward and backward.

Run on a GPU with ``pytest tests/bench/test_fused_linear_cross_entropy_bench.py --benchmark-only``.
Shape: N=8192 tokens, H=4096, V=128256 (Llama-3 8B's head), bf16. Each result carries TFLOP/s (three
N x H x V matmuls) and, in extra_info, the peak memory of one step (torch.cuda.max_memory_allocated):
``peak_gib`` in all and ``peak_extra_gib`` above the inputs. The Triton run also measures the eager
reference once and reports ``peak_extra_frac_of_eager``. Targets on H100: <= 25% of eager's peak memory
at <= 1.1x eager's time.

Eager baselines: "eager" is the reference and fallback (bf16 linear, then cross-entropy on fp32 logits,
as Hugging Face's causal-LM loss does); "eager_bf16" keeps the logits in bf16 (F.cross_entropy on them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from frontier.kernels.fused_linear_cross_entropy import (
    fused_linear_cross_entropy,
    fused_linear_cross_entropy_reference,
)
from tests.bench.conftest import record

N, H, V = 8192, 4096, 128256
GIB = 2**30

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _liger(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss()(weight, hidden, targets)  # Liger's order: (lm_head weight, input, target)


IMPLS: dict[str, Loss] = {
    "triton": lambda h, w, t: fused_linear_cross_entropy(h, w, t, impl="triton"),
    "eager": fused_linear_cross_entropy_reference,
    "eager_bf16": lambda h, w, t: F.cross_entropy(F.linear(h, w), t),
    "liger": _liger,
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(N, H, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    weight = (torch.randn(V, H, device="cuda", generator=gen) / H**0.5).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, V, (N,), device="cuda", generator=gen)
    targets[::50] = -100
    return hidden, weight, targets


def _step(fn: Loss, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = fn(hidden, weight, targets)
        torch.autograd.grad(loss, (hidden, weight))
        torch.cuda.synchronize()

    return step


def _peak_extra_bytes(step: Callable[[], None]) -> tuple[int, int]:
    """(peak bytes in all, peak bytes above what was allocated before) of one call of `step`."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    peak = torch.cuda.max_memory_allocated()
    return peak, peak - before


@pytest.mark.gpu
@pytest.mark.parametrize("impl", list(IMPLS))
def test_fused_linear_cross_entropy_bf16(benchmark, device_limits: dict, impl: str) -> None:  # noqa: ANN001
    benchmark.group = f"fused_linear_cross_entropy bf16 N{N} H{H} V{V} fwd+bwd"
    if impl == "liger":
        pytest.importorskip("liger_kernel")
    hidden, weight, targets = _inputs()
    step = _step(IMPLS[impl], hidden, weight, targets)
    step()  # warm up (Triton compilation) before measuring memory and time
    peak, extra = _peak_extra_bytes(step)
    benchmark.pedantic(step, rounds=10, warmup_rounds=1)
    record(benchmark, device_limits, flops=3 * 2.0 * N * H * V)
    benchmark.extra_info["peak_gib"] = round(peak / GIB, 2)
    benchmark.extra_info["peak_extra_gib"] = round(extra / GIB, 2)
    if impl == "triton":
        eager_peak, eager_extra = _peak_extra_bytes(_step(IMPLS["eager"], hidden, weight, targets))
        benchmark.extra_info["peak_frac_of_eager"] = round(peak / eager_peak, 3)
        benchmark.extra_info["peak_extra_frac_of_eager"] = round(extra / eager_extra, 3)
