"""Fused linear + cross-entropy: ``cross_entropy(hidden @ weight.T + bias, targets)`` without the (N, V) logits,
optionally with Gemma 2's final-logit softcapping (``logits = c * tanh(logits / c)``) in between.

Three faces, one name:
  * ``fused_linear_cross_entropy_reference`` -- the eager computation (linear in the input dtype, then
    ``cross_entropy_reference`` in fp32, as Hugging Face's causal-LM loss does); the fallback;
  * ``torch.ops.frontier.fused_linear_cross_entropy`` (autograd registered) and
    ``torch.ops.frontier.fused_linear_cross_entropy_bwd`` -- chunked loops behind torch.library ops
    (frontier.kernels.library: triton_op, custom_op under the interpreter) with fake implementations;
  * ``fused_linear_cross_entropy(hidden, weight, targets, ..., impl=...)`` -- the public op.

The loop walks N in chunks of C rows: one (C, V) logits buffer is filled by a matmul, the cross-entropy
kernel turns it into loss and, in place, the logits gradient (already scaled by 1/n_valid for "mean"), and
two more matmuls add that chunk's share to dhidden (C, H rows) and dweight (V, H). Peak extra memory is
O(C x V) + the gradients themselves; the (N, V) logits never exist.

Softcapping: a small elementwise kernel caps the (C, V) buffer in place before the cross-entropy kernel and,
when a gradient is wanted, writes the chain factor ``1 - tanh^2`` into a second (C, V) buffer; the logits
gradient is multiplied by it before the two gradient matmuls. The factor is *kept*, not recomputed: recomputing
tanh after the cross-entropy kernel has overwritten the buffer would need the logits again, i.e. one more
(C x V x H) matmul per chunk (+33% of the op's FLOPs), while keeping it costs one more (C, V) buffer, bounded
by chunk_size. It is computed from ``exp(-2|x|/c)`` without cancellation (``1 - tanh^2`` taken from a rounded
tanh near +-1 loses every digit in half precision).

For "mean"/"sum" the gradients are computed in the forward (3 matmuls in all, like eager) and the backward
only scales them by grad_output (free when it is 1). For "none" a per-row grad_output cannot be applied to
an already summed dweight, so the forward computes only the loss and the backward recomputes the logits
chunk by chunk (4 matmuls in all).

Precision: logits and their gradient are rounded to the input dtype (as eager does; the capped logits and the
factor once each, where eager rounds after each of /, tanh, *); dweight accumulates in the weight dtype across
chunks (one rounding per chunk: fp32 accumulation would double its memory), dbias in fp32.
"""

from __future__ import annotations

import math

import torch
from torch.library import wrap_triton

from frontier.kernels.cross_entropy import (
    check_loss_args,
    cross_entropy_reference,
    launch_cross_entropy,
    scale_rows_,
)
from frontier.kernels.dispatch import empty_output, resolve_impl
from frontier.kernels.library import define_op
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MIN_CHUNK = 256  # fewer rows than this underfeeds a GPU matmul
_SOFTCAP_BLOCK = 4096  # elements per program of the elementwise softcap kernel (16 per thread at 8 warps)


def fused_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eager linear (+ softcap, in the logits dtype as Gemma 2 computes it) + cross-entropy; materialises the
    (N, V) logits."""
    logits = torch.nn.functional.linear(hidden, weight, bias)  # (N, V)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return cross_entropy_reference(
        logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        reduction=reduction,
    )  # fmt: skip


def default_chunk_size(n_rows: int, hidden_size: int) -> int:
    """Rows per chunk: C ~ H/2 (a power of two, at least _MIN_CHUNK so the matmuls stay efficient, at most N).

    The (C, V) buffer is then about half the (V, H) weight gradient that must exist anyway, and every chunk
    costs one read-modify-write pass over that gradient (2 GB for a 128k x 4096 bf16 head), so fewer,
    larger chunks are faster: at N=8192, H=4096 that is 4 chunks of 2048 rows and a 0.5 GB buffer."""
    chunk = max(_MIN_CHUNK, 1 << max(hidden_size // 2 - 1, 0).bit_length())  # next power of two
    return max(1, min(n_rows, chunk))


@jit
def _softcap_kernel(X, DCAP, n, cap, WRITE_DCAP: tl.constexpr, BLOCK: tl.constexpr):
    # X <- cap * tanh(X / cap) in place; DCAP <- 1 - tanh^2, d(capped)/dX. With e = exp(-2|X|/cap) (in (0, 1],
    # no overflow): |tanh| = (1 - e) / (1 + e) and 1 - tanh^2 = 4e / (1 + e)^2, neither cancelling.
    cap = tl.cast(cap, tl.float32)  # Inductor passes Python floats as fp64
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-2.0 * tl.abs(x) / cap)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    tl.store(X + offs, to_dtype(cap * t, X.dtype.element_ty), mask=mask)
    if WRITE_DCAP:
        tl.store(DCAP + offs, to_dtype(4.0 * e / ((1.0 + e) * (1.0 + e)), DCAP.dtype.element_ty), mask=mask)


def _softcap_(logits: torch.Tensor, softcap: float, dcap: torch.Tensor | None) -> None:
    """Cap contiguous `logits` in place; write ``1 - tanh^2`` into `dcap` (same shape) when given."""
    n = logits.numel()
    if n:
        wrap_triton(_softcap_kernel)[(triton.cdiv(n, _SOFTCAP_BLOCK),)](
            logits, logits if dcap is None else dcap, n, softcap,
            WRITE_DCAP=dcap is not None, BLOCK=_SOFTCAP_BLOCK, num_warps=8,
        )  # fmt: skip


def _chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    want: tuple[bool, bool, bool],
    *,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    chunk_size: int,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop: per-row loss (N,) fp32 and, where `want` says so (and grad_scale is given), dhidden,
    dweight, dbias of ``sum(grad_scale * loss_rows)``; unwanted gradients are empty tensors. `softcap`: the
    logits are ``softcap * tanh(logits / softcap)`` (None: uncapped).

    grad_scale: fp32 of shape () (1/n_valid or 1) or (N,) (a per-row grad_output).
    """
    n_rows, n_vocab = hidden.shape[0], weight.shape[0]
    want_h, want_w, want_b = want if grad_scale is not None else (False, False, False)
    want_b = want_b and bias is not None
    grad = want_h or want_w or want_b
    loss_rows = empty_output((n_rows,), dtype=torch.float32, device=hidden.device)
    lse = hidden.new_empty(min(chunk_size, n_rows), dtype=torch.float32)  # scratch
    d_hidden = empty_output(hidden.shape, dtype=hidden.dtype, device=hidden.device) if want_h else hidden.new_empty(0)
    d_weight = empty_output(weight.shape, dtype=weight.dtype, device=weight.device) if want_w else weight.new_empty(0)
    d_bias = hidden.new_zeros(n_vocab, dtype=torch.float32) if want_b else hidden.new_empty(0)
    buf = hidden.new_empty(min(chunk_size, n_rows), n_vocab)  # (C, V): the logits, then their gradient
    dcap_buf = buf.new_empty(buf.shape) if softcap is not None and grad else None  # (C, V): 1 - tanh^2
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        h = hidden[start:end]  # (c, H)
        logits = buf[: end - start]  # (c, V)
        if bias is None:
            torch.mm(h, weight.t(), out=logits)
        else:
            torch.addmm(bias, h, weight.t(), out=logits)
        dcap = None if dcap_buf is None else dcap_buf[: end - start]  # (c, V)
        if softcap is not None:
            _softcap_(logits, softcap, dcap)
        scale = None
        if grad:
            scale = grad_scale if grad_scale.dim() == 0 else grad_scale[start:end]
        launch_cross_entropy(
            logits, targets[start:end], loss_out=loss_rows[start:end], lse=lse[: end - start],
            grad_out=logits if grad else None, grad_scale=scale,
            ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        )  # fmt: skip
        # logits now holds d(loss)/d(logits) for this chunk, scaled (of the capped logits: chain to the raw ones)
        if dcap is not None:
            logits.mul_(dcap)
        if want_h:
            torch.mm(logits, weight, out=d_hidden[start:end])  # (c, V) @ (V, H)
        if want_w and start == 0:
            torch.mm(logits.t(), h, out=d_weight)  # (V, c) @ (c, H): the first chunk writes...
        elif want_w:
            d_weight.addmm_(logits.t(), h)  # ...the others accumulate (in the weight dtype)
        if want_b:
            d_bias += logits.sum(0, dtype=torch.float32)  # (V,)
    if want_w and n_rows == 0:
        d_weight.zero_()
    if want_b:
        d_bias = d_bias.to(bias.dtype)
    return loss_rows, d_hidden, d_weight, d_bias


def _reduce(loss_rows: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss_rows
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows.sum() / (targets != ignore_index).sum().clamp(min=1)  # every row ignored -> 0


@define_op("fused_linear_cross_entropy")
def _flce_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dhidden, dweight, dbias): loss reduced; the gradients (of the reduced loss) computed now for
    "mean"/"sum" where asked, empty otherwise (the backward of "none" recomputes them)."""
    grad_scale = None
    if reduction != "none":
        if reduction == "mean":
            grad_scale = 1.0 / (targets != ignore_index).sum().clamp(min=1).to(torch.float32)  # () no sync
        else:
            grad_scale = torch.ones((), dtype=torch.float32, device=hidden.device)
    loss_rows, d_hidden, d_weight, d_bias = _chunked(
        hidden, weight, targets, bias, grad_scale, (grad_hidden, grad_weight, grad_bias),
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=chunk_size,
        softcap=softcap,
    )  # fmt: skip
    return _reduce(loss_rows, targets, ignore_index, reduction), d_hidden, d_weight, d_bias


@define_op("fused_linear_cross_entropy_bwd")
def _flce_bwd_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    grad_rows: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dhidden, dweight, dbias) of ``sum(grad_rows * loss_rows)``, recomputing the logits chunk by chunk."""
    _loss, d_hidden, d_weight, d_bias = _chunked(
        hidden, weight, targets, bias, grad_rows.float(), (grad_hidden, grad_weight, grad_bias),
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=chunk_size,
        softcap=softcap,
    )  # fmt: skip
    return d_hidden, d_weight, d_bias


def _fake_grads(hidden, weight, bias, reduction, want):  # type: ignore[no-untyped-def]
    want_h, want_w, want_b = want if reduction != "none" else (False, False, False)
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format) if want_h else hidden.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if want_w else weight.new_empty(0),
        bias.new_empty(bias.shape) if want_b and bias is not None else hidden.new_empty(0),
    )


@_flce_op.register_fake
def _(hidden, weight, targets, bias, ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size, *want):  # type: ignore[no-untyped-def]
    loss = hidden.new_empty(hidden.shape[:1] if reduction == "none" else (), dtype=torch.float32)
    return (loss, *_fake_grads(hidden, weight, bias, reduction, want))


@_flce_bwd_op.register_fake
def _(hidden, weight, targets, bias, grad_rows, ignore_index, label_smoothing, z_loss, softcap, chunk_size, *want):  # type: ignore[no-untyped-def]
    return _fake_grads(hidden, weight, bias, "sum", want)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    hidden, weight, targets, bias, *ctx.options = inputs
    ctx.reduction = ctx.options[4]
    _loss, *grads = output
    ctx.mark_non_differentiable(*grads)
    if ctx.reduction == "none":
        ctx.save_for_backward(hidden, weight, targets, bias)
    else:
        ctx.save_for_backward(*grads)  # ours alone: the backward scales them in place


def _scaled(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad * grad_loss``: in place when running eagerly (the saved gradient is ours alone, and the Triton
    op skips the pass when grad_loss is 1); out of place while traced, where a mutation of a forward output
    would confuse AOTAutograd and Inductor reuses the dead buffer anyway."""
    if not grad.numel():
        return grad
    if type(grad) is torch.Tensor and not torch.compiler.is_compiling():  # not a fake/functional tracer tensor
        return scale_rows_(grad, grad_loss)
    return grad * grad_loss  # a 0-d fp32 factor keeps grad's dtype, multiplied in fp32


def _backward(ctx, grad_loss, *_grad_grads):  # type: ignore[no-untyped-def]
    if ctx.reduction == "none":
        hidden, weight, targets, bias = ctx.saved_tensors
        ignore_index, label_smoothing, z_loss, softcap, _reduction, chunk_size, *want = ctx.options
        grads = torch.ops.frontier.fused_linear_cross_entropy_bwd(
            hidden, weight, targets, bias, grad_loss, ignore_index, label_smoothing, z_loss, softcap, chunk_size, *want
        )
    else:
        grads = [_scaled(g, grad_loss) for g in ctx.saved_tensors]
    d_hidden, d_weight, d_bias = (g if g.numel() else None for g in grads)
    return d_hidden, d_weight, None, d_bias, None, None, None, None, None, None, None, None, None


_flce_op.register_autograd(_backward, setup_context=_setup_context)


def _check_shapes(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_linear_cross_entropy: expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"fused_linear_cross_entropy: bias {tuple(bias.shape)} should be ({weight.shape[0]},)")


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets, ...)`` for hidden (N, H), weight (V, H) (the lm_head),
    with loss and gradients computed chunk by chunk (`chunk_size` rows; default ``default_chunk_size``).
    `softcap` c (Gemma 2's final_logit_softcapping) takes the loss of ``c * tanh(logits / c)`` instead.

    Same conventions as ``frontier.kernels.cross_entropy.cross_entropy`` (fp32 loss; "mean" over non-ignored
    rows, 0 when all are ignored). impl: "auto" (Triton on CUDA for fp32/fp16/bf16, else the reference),
    "triton", or "torch" (the reference, which materialises the logits); see frontier.kernels.dispatch.
    """
    _check_shapes(hidden, weight, bias)
    check_loss_args("fused_linear_cross_entropy", hidden.shape[0], targets, label_smoothing, z_loss, reduction)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size={chunk_size} must be >= 1")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"fused_linear_cross_entropy: softcap={softcap} must be a positive finite number or None")
    unsupported = None if hidden.dtype in _DTYPES else f"takes fp32/fp16/bf16, got {hidden.dtype}"
    if resolve_impl(impl, hidden.device, op="fused_linear_cross_entropy", unsupported=unsupported) == "torch":
        return fused_linear_cross_entropy_reference(
            hidden, weight, targets, bias=bias, ignore_index=ignore_index, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, reduction=reduction,
        )  # fmt: skip
    dtypes = {hidden.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) != 1:
        raise ValueError(f"fused_linear_cross_entropy: hidden, weight, bias need one dtype, got {dtypes}")
    grad_on = torch.is_grad_enabled()
    loss, *_grads = torch.ops.frontier.fused_linear_cross_entropy(
        hidden.contiguous(), weight.contiguous(), targets.contiguous(), bias, ignore_index, label_smoothing, z_loss,
        None if softcap is None else float(softcap), reduction,
        chunk_size or default_chunk_size(hidden.shape[0], hidden.shape[1]),
        grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )  # fmt: skip
    return loss
