"""SwiGLU (silu(gate) * up) forward+backward: Triton kernel vs torch eager vs torch.compile vs Liger-Kernel.

Run on a GPU with ``pytest tests/bench/test_swiglu_bench.py --benchmark-only``. Memory bound; the byte
floor is 8 passes over one activation (forward: read gate and up, write y; backward: read dy, gate and
up, write dgate and dup). Target on H100: >= 85% of the measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from frontier.kernels.swiglu import swiglu, swiglu_reference
from tests.bench.fwd_bwd import PROVIDERS, bench_fwd_bwd, pick

ROWS = 8192  # 4 sequences of 2048 tokens
INTERMEDIATE = [11008, 14336]  # Llama-2-7B, Llama-3-8B


@pytest.mark.gpu
@pytest.mark.parametrize("intermediate", INTERMEDIATE)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_swiglu_fwd_bwd_bf16(benchmark, device_limits: dict, provider: str, intermediate: int) -> None:  # noqa: ANN001
    benchmark.group = f"swiglu bf16 fwd+bwd {ROWS}x{intermediate}"
    gate = torch.randn(ROWS, intermediate, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    up = torch.randn(ROWS, intermediate, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fn = pick(
        provider,
        lambda a, b: swiglu(a, b, impl="triton"),
        swiglu_reference,
        "liger_kernel.ops.swiglu:LigerSiLUMulFunction",
    )
    if provider == "liger":
        liger = fn
        fn = lambda a, b: liger.apply(a, b)  # noqa: E731
    bench_fwd_bwd(benchmark, device_limits, fn, [gate, up], bytes_moved=8 * gate.numel() * gate.element_size())
