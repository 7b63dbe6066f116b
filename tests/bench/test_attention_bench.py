"""Attention benchmarks: the Triton flash kernels against torch SDPA and a compiled reference.

Run on a GPU with ``pytest tests/bench/test_attention_bench.py --benchmark-only``. Each result
carries TFLOP/s and its fraction of the measured bf16 matmul rate (tests/bench/conftest.py).
FLOPs count only the visible (query, key) pairs: 4 * D per pair forward (two matmuls), 2.5x that
backward (five matmuls), the FlashAttention convention.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from frontier.kernels.attention import attention, attention_reference
from tests.bench.conftest import record

BATCH, HEADS, SEQ, DIM = 4, 32, 4096, 128  # 16k tokens x 32 heads: hundreds of blocks per kernel


def _flops(visible_pairs: int, mode: str) -> float:
    fwd = 4.0 * DIM * visible_pairs * BATCH * HEADS
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def _run(
    fn: Callable[..., torch.Tensor], mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        out = fn(q, k, v)
        if mode == "fwd+bwd":
            torch.autograd.grad(out, (q, k, v), do)
        torch.cuda.synchronize()

    return step


def _inputs(hkv: int = HEADS) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(BATCH, h, SEQ, DIM, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
        for h in (HEADS, hkv, hkv)
    )
    return q, k, v, torch.randn_like(q)


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


@functools.cache
def _compiled_reference() -> Callable[..., torch.Tensor]:
    # bf16 matmuls and fp32 softmax with the S x S scores in memory; compiled on first use.
    return torch.compile(lambda q, k, v: attention_reference(q, k, v, causal=True, upcast=False))


IMPLS = {
    "triton": lambda q, k, v: attention(q, k, v, causal=True, impl="triton"),
    "sdpa_flash": _sdpa_flash,
    "compiled_reference": lambda q, k, v: _compiled_reference()(q, k, v),
}


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_attention_causal_bf16(benchmark, device_limits: dict, impl: str, mode: str) -> None:  # noqa: ANN001
    benchmark.group = f"attention causal bf16 D{DIM} S{SEQ} {mode}"
    q, k, v, do = _inputs()
    step = _run(IMPLS[impl], mode, q, k, v, do)
    benchmark.pedantic(step, rounds=20, warmup_rounds=3)
    record(benchmark, device_limits, flops=_flops(SEQ * (SEQ + 1) // 2, mode))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "sdpa"])
def test_attention_packed_documents(benchmark, device_limits: dict, impl: str) -> None:  # noqa: ANN001
    """Packed sequences (documents of 256 to 1280 tokens): Triton skips the blocks no token sees;
    SDPA gets the equivalent boolean mask (no flash backend)."""
    benchmark.group = f"attention doc-masked bf16 D{DIM} S{SEQ} fwd+bwd"
    q, k, v, do = _inputs(hkv=HEADS // 4)
    lengths = torch.tensor([256, 1024, 512, 768, 256, 1280])  # sums to SEQ
    doc_ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths).cuda().expand(BATCH, SEQ)
    step = _run(lambda q, k, v: attention(q, k, v, causal=True, doc_ids=doc_ids, impl=impl), "fwd+bwd", q, k, v, do)
    benchmark.pedantic(step, rounds=20, warmup_rounds=3)
    pairs = int((lengths * (lengths + 1) // 2).sum())
    record(benchmark, device_limits, flops=_flops(pairs, "fwd+bwd"))
