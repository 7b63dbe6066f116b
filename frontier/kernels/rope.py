"""Rotary position embedding applied to queries and keys (Hugging Face Llama convention).

``out = x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]`` (halves of the head
dim), q of shape (B, Hq, S, D), k of shape (B, Hkv, S, D) and cos/sin of shape (B or 1, S, D), as
produced by LlamaRotaryEmbedding.

Three faces, one name:
  * ``rope_reference`` -- transformers' apply_rotary_pos_emb, verbatim (the fallback);
  * ``torch.ops.frontier.rope`` / ``rope_backward`` -- one Triton launch for q and k together (a torch.library
    op from frontier.kernels.library + fake + autograd);
  * ``rope(q, k, cos, sin, impl=...)`` -- the public op.

One program handles one (batch, position) and all heads of q and k, so cos/sin are read once per token.
The rotation is orthogonal: the backward is the same kernel with sin negated and its halves swapped.
Gradients for cos/sin (not needed by Llama, which builds them under no_grad) are computed in PyTorch.
"""

from __future__ import annotations

import torch
from torch.library import wrap_triton

from frontier.kernels.dispatch import TILE_ELEMENTS, empty_output_like, resolve_impl, warps_for
from frontier.kernels.library import define_op
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers.models.llama.modeling_llama.apply_rotary_pos_emb with unsqueeze_dim=1."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B|1, 1, S, D): broadcast over heads
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


@jit
def _rotate_heads(
    X, OUT, x_tok, o_tok, stride_xh, stride_oh, n_heads, half, tok_mask, c1, c2, s1, s2,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # x_tok/o_tok: (T, 1, 1) offsets of head 0 of each token; tile (T tokens, BLOCK_H heads, BLOCK_D per half).
    h = tl.arange(0, BLOCK_H)[None, :, None]
    d = tl.arange(0, BLOCK_D)[None, None, :]
    mask = tok_mask & (h < n_heads) & (d < half)
    xp = X + x_tok + h * stride_xh + d
    x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xp + half, mask=mask, other=0.0).to(tl.float32)
    op = OUT + o_tok + h * stride_oh + d
    tl.store(op, to_dtype(x1 * c1 - x2 * s1, OUT.dtype.element_ty), mask=mask)
    tl.store(op + half, to_dtype(x2 * c2 + x1 * s2, OUT.dtype.element_ty), mask=mask)


@jit
def _rope_kernel(
    Q, K, COS, SIN, QO, KO,
    n_tokens, seq_len, half, n_qh, n_kh,
    sq_b, sq_h, sq_s, sqo_b, sqo_h, sqo_s,
    sk_b, sk_h, sk_s, sko_b, sko_h, sko_s,
    sc_b, sc_s,
    BACKWARD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_T consecutive (batch, position) tokens, all heads of q and k; cos/sin read once each.
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    tok_mask = (tok < n_tokens)[:, None, None]
    b = (tok // seq_len)[:, None, None]
    s = (tok % seq_len)[:, None, None]
    d = tl.arange(0, BLOCK_D)[None, None, :]
    cmask = tok_mask & (d < half)
    cs = COS + b * sc_b + s * sc_s + d
    ss = SIN + b * sc_b + s * sc_s + d
    c1 = tl.load(cs, mask=cmask, other=0.0).to(tl.float32)
    c2 = tl.load(cs + half, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.load(ss, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.load(ss + half, mask=cmask, other=0.0).to(tl.float32)
    if BACKWARD:
        # Transpose of [[c1, -s1], [s2, c2]] is [[c1, s2], [-s1, c2]]: same form with (s1, s2) -> (-s2, -s1).
        s1, s2 = -s2, -s1
    _rotate_heads(Q, QO, b * sq_b + s * sq_s, b * sqo_b + s * sqo_s, sq_h, sqo_h, n_qh, half, tok_mask,
                  c1, c2, s1, s2, BLOCK_QH, BLOCK_D)  # fmt: skip
    _rotate_heads(K, KO, b * sk_b + s * sk_s, b * sko_b + s * sko_s, sk_h, sko_h, n_kh, half, tok_mask,
                  c1, c2, s1, s2, BLOCK_KH, BLOCK_D)  # fmt: skip


def _last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool):
    q, k = _last_dim_unit(q), _last_dim_unit(k)
    # (B|1, S, D) -> (B, S, D) as a view; a batch stride of 0 re-reads the shared row.
    cos = _last_dim_unit(cos).expand(q.shape[0], -1, -1)
    sin = _last_dim_unit(sin).expand(q.shape[0], -1, -1)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    # Outputs keep the inputs' layout: HF's q is a transposed view of (B, S, H, D) and stays one.
    qo, ko = empty_output_like(q), empty_output_like(k)
    bsz, n_qh, seq_len, dim = q.shape
    n_kh = k.shape[1]
    n_tokens = bsz * seq_len
    if n_tokens == 0:
        return qo, ko
    half = dim // 2
    block_d = triton.next_power_of_2(half)
    block_qh, block_kh = triton.next_power_of_2(n_qh), triton.next_power_of_2(n_kh)
    per_token = (block_qh + block_kh) * block_d
    # Stack tokens until a program moves ~TILE_ELEMENTS per half (Llama-7B: 1 token; tiny models: many).
    block_t = 1 << max(0, (TILE_ELEMENTS // per_token).bit_length() - 1)
    num_warps = warps_for(block_t * per_token)  # per_token need not be a power of two (GQA: 32 + 8 heads)
    wrap_triton(_rope_kernel)[(triton.cdiv(n_tokens, block_t),)](
        q, k, cos, sin, qo, ko,
        n_tokens, seq_len, half, n_qh, n_kh,
        q.stride(0), q.stride(1), q.stride(2), qo.stride(0), qo.stride(1), qo.stride(2),
        k.stride(0), k.stride(1), k.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        cos.stride(0), cos.stride(1),
        BACKWARD=backward, BLOCK_T=block_t, BLOCK_QH=block_qh, BLOCK_KH=block_kh, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return qo, ko


@define_op("rope")
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(q, k, cos, sin, backward=False)


@define_op("rope_backward")
def _rope_backward_op(
    dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(dq, dk, cos, sin, backward=True)


@_rope_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(_last_dim_unit(q)), torch.empty_like(_last_dim_unit(k))


@_rope_backward_op.register_fake
def _(dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(_last_dim_unit(dq)), torch.empty_like(_last_dim_unit(dk))


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    q, k, cos, sin = inputs
    needs_trig_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
    ctx.save_for_backward(cos, sin, *((q, k) if needs_trig_grad else ()))


def _cos_sin_grads(q, k, dq, dk, cos, sin):  # type: ignore[no-untyped-def]
    """d/dcos and d/dsin, summed over heads and (when cos was shared) over the batch."""
    dcos = (dq.float() * q.float()).sum(1) + (dk.float() * k.float()).sum(1)  # (B, S, D)
    dsin = (dq.float() * _rotate_half(q.float())).sum(1) + (dk.float() * _rotate_half(k.float())).sum(1)
    if cos.shape[0] == 1:
        dcos, dsin = dcos.sum(0, keepdim=True), dsin.sum(0, keepdim=True)
    return dcos.to(cos.dtype), dsin.to(sin.dtype)


def _backward(ctx, dq_out, dk_out):  # type: ignore[no-untyped-def]
    cos, sin, *qk = ctx.saved_tensors
    dq, dk = torch.ops.frontier.rope_backward(dq_out, dk_out, cos, sin)
    dcos = dsin = None
    if qk:
        dcos, dsin = _cos_sin_grads(*qk, dq_out, dk_out, cos, sin)
    return dq, dk, dcos, dsin


_rope_op.register_autograd(_backward, setup_context=_setup_context)


def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, Hq, S, D) and k (B, Hkv, S, D) by cos/sin (B or 1, S, D); returns (q_rot, k_rot).

    impl: "auto" (Triton on CUDA, else the reference), "triton", or "torch" (the reference).
    """
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or cos.shape != sin.shape:
        raise ValueError(
            f"rope: expected q, k of rank 4 and cos, sin of equal rank-3 shapes; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    bsz, _, seq_len, dim = q.shape
    if (
        k.shape[0] != bsz
        or k.shape[2:] != q.shape[2:]
        or cos.shape[1:] != (seq_len, dim)
        or cos.shape[0] not in (1, bsz)
        or dim % 2
    ):
        raise ValueError(
            f"rope: shapes do not agree (even head dim needed): q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"cos {tuple(cos.shape)}"
        )
    if resolve_impl(impl, q.device, op="rope") == "torch":
        return rope_reference(q, k, cos, sin)
    return torch.ops.frontier.rope(q, k, cos, sin)
