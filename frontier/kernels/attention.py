"""Causal / document-masked attention with grouped-query heads: Triton flash kernels, SDPA, reference.

One name through every layer: `attention` (the public function), the torch.library ops
``frontier::attention_fwd`` / ``frontier::attention_bwd`` (schema, fake, autograd), the launchers
`attention_fwd` / `attention_bwd` (which accept output buffers, so tests can poison them) and
`attention_reference` (pure PyTorch, what tests compare against; impl="torch"). Where Triton cannot run,
"auto" falls back to `attention_sdpa` (torch's scaled_dot_product_attention; frontier.kernels.dispatch).

Shapes: q (B, Hq, S, D); k, v (B, Hkv, S, D) with Hq % Hkv == 0; doc_ids (B, S) integer ids,
non-decreasing along S (packed documents); a token attends only to tokens of its own document.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.library import wrap_triton

from frontier.kernels.attention_triton import attn_fwd_kernel
from frontier.kernels.attention_triton_bwd import (
    attn_bwd_dkdv_kernel,
    attn_bwd_dq_kernel,
    attn_bwd_preprocess_kernel,
)
from frontier.kernels.dispatch import resolve_impl
from frontier.kernels.interpreter import ATTENTION_BLOCKS, INTERPRETED, dot_in_fp32
from frontier.kernels.library import define_op
from frontier.kernels.triton_utils import triton

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- reference and SDPA


def visibility_mask(
    seq_len: int, *, causal: bool, doc_ids: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B or 1, 1, S, S) mask, True where query i may attend to key j; None when all may."""
    mask = None
    if causal:
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()[None, None]
    if doc_ids is not None:
        same = doc_ids[:, None, :, None] == doc_ids[:, None, None, :]  # (B, 1, S, S)
        mask = same if mask is None else mask & same
    return mask


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Attention in plain PyTorch; returns (B, Hq, S, D) in q's dtype.

    upcast=True (impl="torch"): float32 math (float64 for float64 inputs). upcast=False: matmuls in
    the inputs' dtype and the softmax in float32 rounded back, as eager PyTorch attention does; tests
    use it to measure PyTorch's own error at a low precision.
    """
    _check_inputs(q, k, v, doc_ids)
    compute = (torch.float64 if q.dtype == torch.float64 else torch.float32) if upcast else q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k = k.to(compute).repeat_interleave(group, dim=1)  # (B, Hq, S, D)
    v = v.to(compute).repeat_interleave(group, dim=1)
    scores = (q.to(compute) @ k.transpose(-1, -2)) * scale  # (B, Hq, S, S)
    mask = visibility_mask(q.shape[2], causal=causal, doc_ids=doc_ids, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.float32 if compute != torch.float64 else compute)
    return (probs.to(compute) @ v).to(q.dtype)


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """torch's scaled_dot_product_attention with the same semantics (flash backend when no doc mask)."""
    _check_inputs(q, k, v, doc_ids)
    gqa = q.shape[1] != k.shape[1]
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    mask = visibility_mask(q.shape[2], causal=causal, doc_ids=doc_ids, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


# ---------------------------------------------------------------- launchers


def _config(kernel: str, head_dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Block sizes and launch settings; fixed (no autotuning) so results are reproducible run to run.

    BLOCK_M counts queries, BLOCK_N keys. The interpreter gets its own (frontier.kernels.interpreter).
    """
    if INTERPRETED:
        return dict(ATTENTION_BLOCKS[kernel])
    if dtype == torch.float32:  # a correctness path (exact fp32 dots, no tensor cores): small tiles
        return {
            "fwd": dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=2),
            "dq": dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=2),
            "dkdv": dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1),
            "pre": dict(BLOCK_M=64, num_warps=4),
        }[kernel]
    # 16-bit inputs. Chosen so that ptxas (sm_90a) reports no or few (< 200 B) register spills:
    # the dK/dV program keeps K, V, dK and dV of BLOCK_N keys in registers, hence only 64 keys at D=128.
    wide = head_dim > 64
    return {
        "fwd": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
        "dq": dict(BLOCK_M=128, BLOCK_N=32 if wide else 64, num_warps=8, num_stages=3),
        "dkdv": dict(BLOCK_M=32, BLOCK_N=64 if wide else 128, num_warps=8, num_stages=3),
        "pre": dict(BLOCK_M=64, num_warps=4),
    }[kernel]


def triton_supports(q: torch.Tensor) -> bool:
    """Whether the Triton kernels handle this head dim and dtype (power-of-two D in [16, 128])."""
    d = q.shape[-1]
    return q.dtype in _TRITON_DTYPES and 16 <= d <= 128 and d & (d - 1) == 0


def _unsupported(q: torch.Tensor) -> str | None:
    if triton_supports(q):
        return None
    return f"needs a power-of-two head dim in [16, 128] and fp16/bf16/fp32; got D={q.shape[-1]}, {q.dtype}"


def _doc_bounds(doc_ids: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-token document start and end indices (B, S) int32: doc_start[i] <= j < doc_end[i] <=> same doc."""
    if doc_ids is None:
        unused = like.new_empty(1, dtype=torch.int32)  # the kernels never read it (HAS_DOC=False)
        return unused, unused, False
    ids = doc_ids.contiguous()
    start = torch.searchsorted(ids, ids, side="left", out_int32=True)
    end = torch.searchsorted(ids, ids, side="right", out_int32=True)
    return start, end, True


def _lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _dot_args(dtype: torch.dtype) -> dict[str, object]:
    # fp32 inputs: no TF32 rounding in the dots. F32: set only for the interpreter's bf16 dot.
    return {"PREC": "ieee" if dtype == torch.float32 else None, "F32": dot_in_fp32(dtype)}


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor | None,
    causal: bool,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: returns out (like q) and lse (B, Hq, S) float32 in log2 units
    (natural logsumexp of the scaled, masked scores times log2 e). Given buffers (out: q's shape and
    dtype, unit stride in the last dimension; lse: contiguous) are filled and returned."""
    q, k, v = (_lastdim_contiguous(t) for t in (q, k, v))
    batch, heads, seq, dim = q.shape
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(batch, heads, seq, device=q.device, dtype=torch.float32) if lse is None else lse
    doc_start, doc_end, has_doc = _doc_bounds(doc_ids, q)
    if q.numel() == 0:
        return out, lse
    cfg = _config("fwd", dim, q.dtype)
    grid = (triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)
    wrap_triton(attn_fwd_kernel)[grid](
        q,
        k,
        v,
        out,
        lse,
        doc_start,
        doc_end,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(out),
        heads,
        heads // k.shape[1],
        seq,
        scale * math.log2(math.e),
        D=dim,
        CAUSAL=causal,
        HAS_DOC=has_doc,
        **_dot_args(q.dtype),
        **cfg,
    )
    return out, lse


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    doc_ids: torch.Tensor | None,
    causal: bool,
    scale: float,
    *,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels (delta preprocess, dK/dV, dQ): returns dq, dk, dv like q, k, v."""
    do, q, k, v, out = (_lastdim_contiguous(t) for t in (do, q, k, v, out))
    batch, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    delta = torch.empty_like(lse)
    doc_start, doc_end, has_doc = _doc_bounds(doc_ids, q)
    if q.numel() == 0:
        return dq, dk, dv
    common = dict(D=dim, CAUSAL=causal, HAS_DOC=has_doc, **_dot_args(q.dtype))
    qk_scale = scale * math.log2(math.e)
    cfg = _config("pre", dim, q.dtype)
    wrap_triton(attn_bwd_preprocess_kernel)[(triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)](
        out, do, delta, *_strides(out), *_strides(do), heads, seq, D=dim, **cfg
    )
    cfg = _config("dkdv", dim, q.dtype)
    wrap_triton(attn_bwd_dkdv_kernel)[(triton.cdiv(seq, cfg["BLOCK_N"]), batch * kv_heads)](
        q,
        k,
        v,
        do,
        dk,
        dv,
        lse,
        delta,
        doc_start,
        doc_end,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dk),
        *_strides(dv),
        heads,
        heads // kv_heads,
        seq,
        scale,
        qk_scale,
        **common,
        **cfg,
    )
    cfg = _config("dq", dim, q.dtype)
    wrap_triton(attn_bwd_dq_kernel)[(triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)](
        q,
        k,
        v,
        do,
        dq,
        lse,
        delta,
        doc_start,
        doc_end,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dq),
        heads,
        heads // kv_heads,
        seq,
        scale,
        qk_scale,
        **common,
        **cfg,
    )
    return dq, dk, dv


# ---------------------------------------------------------------- torch.library ops


@define_op("attention_fwd")
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, doc_ids, causal, scale)


@define_op("attention_bwd")
def _attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    doc_ids: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(do, q, k, v, out, lse, doc_ids, causal, scale)


@_attention_fwd_op.register_fake
def _attention_fwd_fake(q, k, v, doc_ids, causal, scale):  # noqa: ANN001, ANN202
    batch, heads, seq, _ = q.shape  # outputs laid out as attention_fwd allocates them
    return torch.empty_like(_lastdim_contiguous(q)), q.new_empty(batch, heads, seq, dtype=torch.float32)


@_attention_bwd_op.register_fake
def _attention_bwd_fake(do, q, k, v, out, lse, doc_ids, causal, scale):  # noqa: ANN001, ANN202
    return tuple(torch.empty_like(_lastdim_contiguous(t)) for t in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, doc_ids, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, doc_ids)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):  # noqa: ANN001, ANN202
    q, k, v, out, lse, doc_ids = ctx.saved_tensors
    dq, dk, dv = torch.ops.frontier.attention_bwd(grad_out, q, k, v, out, lse, doc_ids, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public entry point


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            f"attention: expected q (B, Hq, S, D) and k, v (B, Hkv, S, D); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    (b, hq, s, d), (bk, hkv, sk, dk) = q.shape, k.shape
    if (b, s, d) != (bk, sk, dk) or hkv == 0 or hq % hkv:
        raise ValueError(
            f"attention: q {tuple(q.shape)} and k/v {tuple(k.shape)} differ in batch, length or "
            f"head dim, or Hq is not a multiple of Hkv"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if doc_ids is not None and (doc_ids.shape != (b, s) or doc_ids.dtype.is_floating_point):
        raise ValueError(
            f"attention: doc_ids must be integer (B, S) = {(b, s)}; got {doc_ids.dtype} {tuple(doc_ids.shape)}"
        )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with grouped-query heads; returns (B, Hq, S, D) in q's dtype.

    causal: key j visible to query i only when j <= i. doc_ids (B, S): non-decreasing document ids of
    packed sequences; tokens see only their own document (combined with causal). scale defaults to
    1/sqrt(D). impl: "triton" | "torch" (reference) | "sdpa" | "auto" (Triton on CUDA when the kernel
    handles the head dim and dtype, else SDPA: frontier.kernels.dispatch's rule).
    """
    _check_inputs(q, k, v, doc_ids)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    impl = resolve_impl(impl, q.device, op="attention", extra=("sdpa",), unsupported=_unsupported(q))
    if impl == "triton":
        return torch.ops.frontier.attention_fwd(q, k, v, doc_ids, causal, scale)[0]
    if impl == "sdpa":
        return attention_sdpa(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)
    return attention_reference(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)
