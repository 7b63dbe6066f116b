"""Fused linear + cross-entropy: ``cross_entropy(hidden @ weight.T + bias, targets)`` without the (N, V) logits.

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

For "mean"/"sum" the gradients are computed in the forward (3 matmuls in all, like eager) and the backward
only scales them by grad_output (free when it is 1). For "none" a per-row grad_output cannot be applied to
an already summed dweight, so the forward computes only the loss and the backward recomputes the logits
chunk by chunk (4 matmuls in all).

Precision: logits and their gradient are rounded to the input dtype (as eager does); dweight accumulates in
the weight dtype across chunks (one rounding per chunk: fp32 accumulation would double its memory), dbias
in fp32.
"""

from __future__ import annotations

import torch

from frontier.kernels.cross_entropy import (
    check_loss_args,
    cross_entropy_reference,
    launch_cross_entropy,
    scale_rows_,
)
from frontier.kernels.dispatch import empty_output, resolve_impl
from frontier.kernels.library import define_op

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MIN_CHUNK = 256  # fewer rows than this underfeeds a GPU matmul


def fused_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eager linear + cross-entropy; materialises the (N, V) logits."""
    logits = torch.nn.functional.linear(hidden, weight, bias)  # (N, V)
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop: per-row loss (N,) fp32 and, where `want` says so (and grad_scale is given), dhidden,
    dweight, dbias of ``sum(grad_scale * loss_rows)``; unwanted gradients are empty tensors.

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
    buf = hidden.new_empty(min(chunk_size, n_rows), n_vocab)  # (C, V): the only vocabulary-sized buffer
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        h = hidden[start:end]  # (c, H)
        logits = buf[: end - start]  # (c, V)
        if bias is None:
            torch.mm(h, weight.t(), out=logits)
        else:
            torch.addmm(bias, h, weight.t(), out=logits)
        scale = None
        if grad:
            scale = grad_scale if grad_scale.dim() == 0 else grad_scale[start:end]
        launch_cross_entropy(
            logits, targets[start:end], loss_out=loss_rows[start:end], lse=lse[: end - start],
            grad_out=logits if grad else None, grad_scale=scale,
            ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        )  # fmt: skip
        # logits now holds d(loss)/d(logits) for this chunk, scaled
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
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dhidden, dweight, dbias) of ``sum(grad_rows * loss_rows)``, recomputing the logits chunk by chunk."""
    _loss, d_hidden, d_weight, d_bias = _chunked(
        hidden, weight, targets, bias, grad_rows.float(), (grad_hidden, grad_weight, grad_bias),
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=chunk_size,
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
def _(hidden, weight, targets, bias, ignore_index, label_smoothing, z_loss, reduction, chunk_size, *want):  # type: ignore[no-untyped-def]
    loss = hidden.new_empty(hidden.shape[:1] if reduction == "none" else (), dtype=torch.float32)
    return (loss, *_fake_grads(hidden, weight, bias, reduction, want))


@_flce_bwd_op.register_fake
def _(hidden, weight, targets, bias, grad_rows, ignore_index, label_smoothing, z_loss, chunk_size, *want):  # type: ignore[no-untyped-def]
    return _fake_grads(hidden, weight, bias, "sum", want)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    hidden, weight, targets, bias, *ctx.options = inputs
    ctx.reduction = ctx.options[3]
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
        ignore_index, label_smoothing, z_loss, _reduction, chunk_size, *want = ctx.options
        grads = torch.ops.frontier.fused_linear_cross_entropy_bwd(
            hidden, weight, targets, bias, grad_loss, ignore_index, label_smoothing, z_loss, chunk_size, *want
        )
    else:
        grads = [_scaled(g, grad_loss) for g in ctx.saved_tensors]
    d_hidden, d_weight, d_bias = (g if g.numel() else None for g in grads)
    return d_hidden, d_weight, None, d_bias, None, None, None, None, None, None, None, None


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
    reduction: str = "mean",
    chunk_size: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets, ...)`` for hidden (N, H), weight (V, H) (the lm_head),
    with loss and gradients computed chunk by chunk (`chunk_size` rows; default ``default_chunk_size``).

    Same conventions as ``frontier.kernels.cross_entropy.cross_entropy`` (fp32 loss; "mean" over non-ignored
    rows, 0 when all are ignored). impl: "auto" (Triton on CUDA for fp32/fp16/bf16, else the reference),
    "triton", or "torch" (the reference, which materialises the logits); see frontier.kernels.dispatch.
    """
    _check_shapes(hidden, weight, bias)
    check_loss_args("fused_linear_cross_entropy", hidden.shape[0], targets, label_smoothing, z_loss, reduction)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size={chunk_size} must be >= 1")
    unsupported = None if hidden.dtype in _DTYPES else f"takes fp32/fp16/bf16, got {hidden.dtype}"
    if resolve_impl(impl, hidden.device, op="fused_linear_cross_entropy", unsupported=unsupported) == "torch":
        return fused_linear_cross_entropy_reference(
            hidden, weight, targets, bias=bias, ignore_index=ignore_index, label_smoothing=label_smoothing,
            z_loss=z_loss, reduction=reduction,
        )  # fmt: skip
    dtypes = {hidden.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) != 1:
        raise ValueError(f"fused_linear_cross_entropy: hidden, weight, bias need one dtype, got {dtypes}")
    grad_on = torch.is_grad_enabled()
    loss, *_grads = torch.ops.frontier.fused_linear_cross_entropy(
        hidden.contiguous(), weight.contiguous(), targets.contiguous(), bias, ignore_index, label_smoothing, z_loss,
        reduction, chunk_size or default_chunk_size(hidden.shape[0], hidden.shape[1]),
        grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )  # fmt: skip
    return loss
