"""RMSNorm forward+backward: Triton kernel vs torch eager vs torch.compile vs Liger-Kernel.

Run on a GPU with ``pytest tests/bench/test_rms_norm_bench.py --benchmark-only``. Memory bound; the byte
floor is 5 passes over the activations (forward: read x, write y; backward: read dy and x, write dx).
Target on H100: >= 85% of the measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from frontier.kernels.rms_norm import rms_norm, rms_norm_reference
from tests.bench.fwd_bwd import PROVIDERS, bench_fwd_bwd, pick

ROWS = 16384  # 8 sequences of 2048 tokens
HIDDEN = [4096, 8192]  # Llama-2-7B, Llama-2-70B


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rms_norm_fwd_bwd_bf16(benchmark, device_limits: dict, provider: str, hidden: int) -> None:  # noqa: ANN001
    benchmark.group = f"rms_norm bf16 fwd+bwd {ROWS}x{hidden}"
    x = torch.randn(ROWS, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fn = pick(
        provider,
        lambda a, b: rms_norm(a, b, 1e-6, impl="triton"),
        lambda a, b: rms_norm_reference(a, b, 1e-6),
        "liger_kernel.ops.rms_norm:LigerRMSNormFunction",
    )
    if provider == "liger":
        liger = fn
        fn = lambda a, b: liger.apply(a, b, 1e-6)  # noqa: E731
    bench_fwd_bwd(benchmark, device_limits, fn, [x, w], bytes_moved=5 * x.numel() * x.element_size())
