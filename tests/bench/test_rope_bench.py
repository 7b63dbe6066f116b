"""RoPE on q and k, forward+backward: Triton kernel vs torch eager vs torch.compile vs Liger-Kernel.

Run on a GPU with ``pytest tests/bench/test_rope_bench.py --benchmark-only``. Memory bound; the byte
floor is 4 passes over q and k (forward: read, write; backward: read the gradients, write them) plus
one read of cos/sin per pass. q comes in LlamaAttention's layout (a transposed view of (B, S, H, D)).
Target on H100: >= 85% of the measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from frontier.kernels.rope import rope, rope_reference
from tests.bench.fwd_bwd import PROVIDERS, bench_fwd_bwd, pick

BATCH, SEQ, HEAD_DIM = 8, 2048, 128
HEADS = [(32, 8), (32, 32)]  # Llama-3-8B (GQA), Llama-2-7B


@pytest.mark.gpu
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"hq{h[0]}-hkv{h[1]}")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rope_fwd_bwd_bf16(benchmark, device_limits: dict, provider: str, heads: tuple[int, int]) -> None:  # noqa: ANN001
    hq, hkv = heads
    benchmark.group = f"rope bf16 fwd+bwd B{BATCH} S{SEQ} Hq{hq} Hkv{hkv} D{HEAD_DIM}"
    dt = torch.bfloat16
    # (B, S, H, D) projections viewed as (B, H, S, D), as LlamaAttention produces them
    q = torch.randn(BATCH, SEQ, hq, HEAD_DIM, device="cuda", dtype=dt).transpose(1, 2).requires_grad_()
    k = torch.randn(BATCH, SEQ, hkv, HEAD_DIM, device="cuda", dtype=dt).transpose(1, 2).requires_grad_()
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, HEAD_DIM, 2, device="cuda", dtype=torch.float) / HEAD_DIM))
    freqs = torch.arange(SEQ, device="cuda", dtype=torch.float)[:, None] * inv_freq  # (S, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)[None]  # (1, S, D)
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    fn = pick(
        provider,
        lambda *a: rope(*a, impl="triton"),
        rope_reference,
        "liger_kernel.transformers.rope:liger_rotary_pos_emb",
    )
    qk_bytes = (q.numel() + k.numel()) * q.element_size()
    trig_bytes = 2 * cos.numel() * cos.element_size()
    bench_fwd_bwd(benchmark, device_limits, fn, [q, k, cos, sin], bytes_moved=4 * qk_bytes + 2 * trig_bytes)
