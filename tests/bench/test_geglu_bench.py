"""GeGLU (gelu_tanh(gate) * up) forward+backward: Triton kernel vs torch eager vs torch.compile vs Liger-Kernel.

Run on a GPU with ``pytest tests/bench/test_geglu_bench.py --benchmark-only``. Memory bound; the byte
floor is 8 passes over one activation (forward: read gate and up, write y; backward: read dy, gate and
up, write dgate and dup). Target on H100: >= 85% of the measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from frontier.kernels.geglu import geglu, geglu_reference
from tests.bench.fwd_bwd import PROVIDERS, bench_fwd_bwd, pick

ROWS = 8192  # 4 sequences of 2048 tokens
INTERMEDIATE = [9216, 14336]  # Gemma-2-2B, Gemma-2-9B


@pytest.mark.gpu
@pytest.mark.parametrize("intermediate", INTERMEDIATE)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_geglu_fwd_bwd_bf16(benchmark, device_limits: dict, provider: str, intermediate: int) -> None:  # noqa: ANN001
    benchmark.group = f"geglu bf16 fwd+bwd {ROWS}x{intermediate}"
    gate = torch.randn(ROWS, intermediate, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    up = torch.randn(ROWS, intermediate, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fn = pick(
        provider,
        lambda a, b: geglu(a, b, impl="triton"),
        geglu_reference,
        "liger_kernel.ops.geglu:LigerGELUMulFunction",
    )
    if provider == "liger":
        liger = fn
        fn = lambda a, b: liger.apply(a, b)  # noqa: E731
    bench_fwd_bwd(benchmark, device_limits, fn, [gate, up], bytes_moved=8 * gate.numel() * gate.element_size())
