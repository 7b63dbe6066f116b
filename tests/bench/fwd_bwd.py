"""Timing one forward + backward of an elementwise/row-wise op for pytest-benchmark (GPU only).

Implementations compared by the rms_norm / rope / swiglu benchmarks: the Triton kernel, the PyTorch
reference in eager mode and under torch.compile, and Liger-Kernel when it is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from tests.bench.conftest import record

PROVIDERS = ["triton", "torch_eager", "torch_compile", "liger"]


def pick(provider: str, triton: Callable[..., Any], reference: Callable[..., Any], liger: str) -> Callable[..., Any]:
    """The function to time; `liger` names "module:attribute" (skipped when Liger is not installed)."""
    if provider == "triton":
        return triton
    if provider == "torch_eager":
        return reference
    if provider == "torch_compile":
        return torch.compile(reference)
    module, attr = liger.split(":")
    return getattr(pytest.importorskip(module), attr)


def bench_fwd_bwd(
    benchmark: Any,
    limits: dict[str, float],
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    *,
    bytes_moved: float,
    rounds: int = 30,
) -> None:
    """Time fn(*inputs) and the gradients of every input requiring grad, synchronised each round."""
    leaves = [t for t in inputs if t.requires_grad]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]

    def step() -> None:
        result = fn(*inputs)
        result = result if isinstance(result, tuple) else (result,)
        torch.autograd.grad(result, leaves, grads)  # fresh gradient buffers: no accumulation traffic
        torch.cuda.synchronize()

    step()  # compile / JIT outside the measurement
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=3)
    record(benchmark, limits, bytes_moved=bytes_moved)
