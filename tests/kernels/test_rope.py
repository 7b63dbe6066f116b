"""rope: Triton kernel (interpreter on CPU) against the float64 reference (HF apply_rotary_pos_emb)."""

from __future__ import annotations

import zlib

import pytest
import torch

from frontier.kernels.rope import rope, rope_reference
from tests.kernels.reference_check import check_against_reference, leaves

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return rope(q, k, cos, sin, impl="triton")


def _cos_sin(batch: int, seq: int, dim: int, dtype: torch.dtype, offset: int = 0) -> tuple[torch.Tensor, ...]:
    """cos/sin as LlamaRotaryEmbedding builds them (theta 10000), for positions offset..offset+seq-1 per row."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    pos = torch.arange(seq, dtype=torch.float)[None] + torch.arange(batch, dtype=torch.float)[:, None] * offset
    freqs = pos[..., None] * inv_freq  # (batch, seq, dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (batch, seq, dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _qk(bsz: int, hq: int, hkv: int, seq: int, dim: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    # q in the layout LlamaAttention produces: a (B, S, H, D) projection viewed as (B, H, S, D).
    q = torch.randn(bsz, seq, hq, dim, generator=gen).to(dtype).transpose(1, 2)
    k = torch.randn(bsz, hkv, seq, dim, generator=gen).to(dtype)
    return q, k


# (batch, q heads, kv heads, seq, head dim, batch of cos/sin)
SHAPES = [(2, 4, 2, 1, 96, 2), (1, 3, 1, 127, 10, 1), (2, 2, 2, 5, 64, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    bsz, hq, hkv, seq, dim, cos_batch = shape
    seed = zlib.crc32(f"{shape}{dtype}".encode())
    q, k = _qk(bsz, hq, hkv, seq, dim, dtype, seed)
    cos, sin = _cos_sin(cos_batch, seq, dim, dtype, offset=3)
    check_against_reference(_triton, rope_reference, [*leaves(q, k), cos, sin], seed=seed)


@pytest.mark.parametrize("cos_batch", [1, 2])
def test_gradients_of_cos_and_sin(cos_batch: int) -> None:
    # Llama builds cos/sin without grad, but the op must not return silently wrong gradients when they need one.
    q, k = _qk(2, 2, 1, 3, 8, torch.float32, seed=cos_batch)
    cos, sin = _cos_sin(cos_batch, 3, 8, torch.float32, offset=2)
    check_against_reference(_triton, rope_reference, leaves(q, k, cos, sin), seed=cos_batch)


def test_arbitrary_cos_sin_halves() -> None:
    # Llama's cos/sin repeat one half twice; the kernel reads both halves, so check halves that differ.
    q, k = _qk(2, 2, 2, 4, 12, torch.float32, seed=5)
    gen = torch.Generator().manual_seed(6)
    cos, sin = torch.randn(2, 4, 12, generator=gen), torch.randn(2, 4, 12, generator=gen)
    check_against_reference(_triton, rope_reference, [*leaves(q, k), cos, sin], seed=6)


def test_output_keeps_the_input_layout() -> None:
    q, k = _qk(2, 3, 1, 4, 8, torch.float32, seed=0)
    cos, sin = _cos_sin(1, 4, 8, torch.float32)
    qo, ko = _triton(q, k, cos, sin)
    assert qo.stride() == q.stride() and ko.stride() == k.stride()


def test_opcheck() -> None:
    q, k = _qk(2, 3, 1, 5, 8, torch.float32, seed=0)
    cos, sin = _cos_sin(1, 5, 8, torch.float32)
    torch.library.opcheck(torch.ops.frontier.rope.default, (*leaves(q, k), cos, sin))
    torch.library.opcheck(torch.ops.frontier.rope_backward.default, (q, k, cos, sin))


def test_impl_torch_is_the_reference() -> None:
    q, k = _qk(1, 2, 2, 3, 8, torch.float32, seed=0)
    cos, sin = _cos_sin(1, 3, 8, torch.float32)
    for got, want in zip(rope(q, k, cos, sin, impl="torch"), rope_reference(q, k, cos, sin), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "q_shape, k_shape, cos_shape",
    [
        ((1, 2, 3, 7), (1, 2, 3, 7), (1, 3, 7)),
        ((2, 2, 3, 8), (2, 2, 4, 8), (1, 3, 8)),
        ((2, 2, 3, 8), (2, 2, 3, 8), (3, 3, 8)),
    ],
    ids=["odd-head-dim", "seq-mismatch", "cos-batch"],
)
def test_rejects_bad_shapes(q_shape: tuple[int, ...], k_shape: tuple[int, ...], cos_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="rope: shapes do not agree"):
        rope(torch.randn(q_shape), torch.randn(k_shape), torch.randn(cos_shape), torch.randn(cos_shape))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_fullgraph_matches_eager(dtype: torch.dtype) -> None:
    q, k = (t.cuda().requires_grad_() for t in _qk(2, 8, 2, 256, 64, dtype, seed=0))
    cos, sin = (t.cuda() for t in _cos_sin(1, 256, 64, dtype))
    compiled = torch.compile(_triton, fullgraph=True)
    eager_out, comp_out = _triton(q, k, cos, sin), compiled(q, k, cos, sin)
    grads_out = [torch.randn_like(o) for o in eager_out]
    for a, b in zip(comp_out, eager_out, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    g_eager = torch.autograd.grad(eager_out, (q, k), grads_out)
    g_comp = torch.autograd.grad(comp_out, (q, k), grads_out)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
