"""Cross-entropy over a vocabulary: ``loss = logsumexp(x) - x[target]`` (+ label smoothing, + z-loss).

Three faces, one name:
  * ``cross_entropy_reference`` -- pure PyTorch in fp32 (the fallback, and what the tests compare against);
  * Triton kernels behind torch.library ops (frontier.kernels.library: triton_op, custom_op under the
    interpreter) with fake implementations for torch.compile:
      - ``frontier::cross_entropy_fwd``      (functional: per-row loss and logsumexp; autograd registered,
                                               its backward is ``frontier::cross_entropy_bwd``)
      - ``frontier::cross_entropy_fwd_bwd_`` (mutates ``logits``: loss, and the gradient written over the logits)
      - ``frontier::scale_rows_``            (mutates: multiplies rows by a scale; skips the pass when it is 1)
  * ``cross_entropy(logits, targets, ..., impl=...)`` -- the public op, which picks one of them.

One kernel does everything: one program per row streams V in blocks with an online softmax (running max and
rescaled running sum), so the loss costs one read of the row; when a gradient is wanted it streams the row a
second time (it was just read, so mostly from L2) and writes ``softmax*(1 + 2 z lse) - eps/V - (1-eps)*onehot``,
already scaled (1/n_valid for "mean"), over the logits: no second (N, V) buffer exists, ever.

Why the logits are *consumed* (Liger-Kernel's choice, made safe): the (N, V) logits are the largest tensor of
a training step and the caller only made them to take this loss, so a copy would double the peak. When
autograd needs a gradient and ``logits`` is a non-leaf (the lm_head output), the gradient is written in place
of ``logits`` and its values are gone after the call; do not read ``logits`` afterwards (compute accuracy
before). The mutation is declared in the op schema, so autograd's version counter catches any node that saved
``logits`` for its own backward (it raises instead of computing garbage) and torch.compile functionalises it.
A leaf ``logits`` (a user's own tensor) is never overwritten: it takes the functional pair, whose backward
writes the gradient into a fresh buffer. Without autograd (eval) nothing is written.

Conventions: ignored rows (target == ignore_index) have zero loss, zero gradient and lse 0; "mean" divides by
the number of non-ignored rows, and when every row is ignored it is 0 with a zero gradient (PyTorch gives NaN).
A target outside [0, V) that is not ignore_index gives a NaN loss for that row (PyTorch raises; checking on
the host would cost a device sync every step). Losses are fp32 whatever the logits dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import wrap_triton

from frontier.kernels.dispatch import empty_output, resolve_impl
from frontier.kernels.interpreter import CROSS_ENTROPY_MAX_BLOCK_V, INTERPRETED, SCALE_ROWS_BLOCK
from frontier.kernels.library import define_op
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton

REDUCTIONS = ("mean", "sum", "none")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK_V = 32768  # 32 warps x 32 fp32 per thread: a block of a 128k vocabulary in 4 steps
_SCALE_ROWS_BLOCK = 4096


def cross_entropy_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """The loss in PyTorch, computed in fp32 (fp64 stays fp64) with the same conventions as the kernel.

    ``F.cross_entropy(logits.float(), targets, reduction="none", ...)`` (torch's fused log-softmax + NLL, about
    half the time of a logsumexp-and-gather formula on the CPU, backward included) plus
    ``z_loss * logsumexp^2`` per valid row, reduced as the kernel reduces.
    """
    x = logits.float() if logits.dtype != torch.float64 else logits  # (N, V)
    loss = F.cross_entropy(
        x, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none"
    )  # (N,): 0 on ignored rows
    valid = targets != ignore_index
    if z_loss:
        lse = torch.logsumexp(x, dim=-1)  # (N,)
        loss = loss + z_loss * torch.where(valid, lse * lse, torch.zeros_like(lse))
    return _reduce(loss, valid, reduction)


def _reduce(loss_rows: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss_rows
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)  # every row ignored -> 0, not NaN


# ----------------------------------------------------------------------------------------------- kernels


@jit
def _cross_entropy_kernel(
    X, stride_x, G, stride_g, TARGETS, LOSS, LSE, SCALE, stride_scale,
    n_cols, ignore_index, label_smoothing, z_loss,
    COMPUTE_LSE: tl.constexpr, WRITE_GRAD: tl.constexpr, SMOOTHING: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    # One program per row. COMPUTE_LSE: pass 1 (online softmax) -> LOSS, LSE; else LSE is read.
    # WRITE_GRAD: pass 2 writes SCALE[row] * dloss/dx into G (G may be X itself).
    # fp32 math whoever launches (Inductor passes Python floats as fp64)
    label_smoothing = tl.cast(label_smoothing, tl.float32)
    z_loss = tl.cast(z_loss, tl.float32)
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may exceed 2**31
    x_row = X + row * stride_x
    g_row = G + row * stride_g
    target = tl.load(TARGETS + row)
    offs = tl.arange(0, BLOCK_V)
    if target == ignore_index:
        if COMPUTE_LSE:
            tl.store(LOSS + row, 0.0)
            tl.store(LSE + row, 0.0)
        if WRITE_GRAD:
            for start in range(0, n_cols, BLOCK_V):
                cols = start + offs
                tl.store(g_row + cols, tl.zeros([BLOCK_V], dtype=G.dtype.element_ty), mask=cols < n_cols)
    else:
        if COMPUTE_LSE:
            m = float("-inf")  # running max
            d = 0.0  # running sum of exp(x - m)
            sum_x = 0.0  # for label smoothing: sum of the logits
            for start in range(0, n_cols, BLOCK_V):
                cols = start + offs
                mask = cols < n_cols
                x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))
                d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
                if SMOOTHING:
                    sum_x += tl.sum(tl.where(mask, x, 0.0), axis=0)
            lse = m + tl.log(d)
            in_range = (target >= 0) & (target < n_cols)
            x_target = tl.load(x_row + target, mask=in_range, other=float("nan")).to(tl.float32)
            loss = lse - (1.0 - label_smoothing) * x_target
            if SMOOTHING:
                loss -= label_smoothing * sum_x / n_cols
            loss += z_loss * lse * lse
            tl.store(LOSS + row, loss)
            tl.store(LSE + row, lse)
        else:
            lse = tl.load(LSE + row)
        if WRITE_GRAD:
            scale = tl.load(SCALE + row * stride_scale).to(tl.float32)
            softmax_scale = scale * (1.0 + 2.0 * z_loss * lse)  # d(z lse^2)/dx = 2 z lse softmax
            for start in range(0, n_cols, BLOCK_V):
                cols = start + offs
                mask = cols < n_cols
                x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                g = tl.exp(x - lse) * softmax_scale
                if SMOOTHING:
                    g -= scale * label_smoothing / n_cols
                g = tl.where(cols == target, g - scale * (1.0 - label_smoothing), g)
                tl.store(g_row + cols, to_dtype(g, G.dtype.element_ty), mask=mask)


@jit
def _scale_rows_kernel(X, stride_x, SCALE, stride_scale, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    scale = tl.load(SCALE + row * stride_scale).to(tl.float32)
    if scale != 1.0:  # the common grad_output == 1 costs no memory traffic, and no host sync to find out
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        ptr = X + row * stride_x + cols
        x = tl.load(ptr, mask=mask, other=0.0)
        tl.store(ptr, to_dtype(x.to(tl.float32) * scale, X.dtype.element_ty), mask=mask)


def _block_v(n_cols: int, device: torch.device, block_v: int | None) -> tuple[int, int]:
    """(BLOCK_V, num_warps): GPU-sized blocks, small ones in the interpreter (frontier.kernels.interpreter)."""
    cap = block_v or (CROSS_ENTROPY_MAX_BLOCK_V if INTERPRETED else _MAX_BLOCK_V)
    block = min(cap, triton.next_power_of_2(max(n_cols, 1)))
    return block, (32 if block >= 16384 else 16 if block >= 4096 else 8 if block >= 1024 else 4)


def launch_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss_out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    block_v: int | None = None,
) -> None:
    """Run the kernel on (N, V) `logits` (unit stride along V) and (N,) int `targets`.

    With `loss_out` (N,) fp32: computes loss and writes logsumexp into `lse` (N,) fp32. Without it: reads `lse`.
    With `grad_out` (N, V; may be `logits` itself): writes ``grad_scale * dloss/dlogits`` there, where
    `grad_scale` is a fp32 tensor of shape () or (N,) (any stride, e.g. an expanded scalar).
    """
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    block, num_warps = _block_v(n_cols, logits.device, block_v)
    compute_lse, write_grad = loss_out is not None, grad_out is not None
    scale = grad_scale if grad_scale is not None else lse  # any fp32 tensor: unused without WRITE_GRAD
    wrap_triton(_cross_entropy_kernel)[(n_rows,)](
        logits, logits.stride(0),
        grad_out if write_grad else logits, grad_out.stride(0) if write_grad else 0,
        targets, loss_out if compute_lse else lse, lse, scale, scale.stride(0) if scale.dim() else 0,
        n_cols, ignore_index, label_smoothing, z_loss,
        COMPUTE_LSE=compute_lse, WRITE_GRAD=write_grad, SMOOTHING=label_smoothing != 0.0, BLOCK_V=block,
        num_warps=num_warps,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ torch.library


@define_op("cross_entropy_fwd")
def _cross_entropy_fwd_op(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, label_smoothing: float, z_loss: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and logsumexp (both (N,) fp32); `logits` is only read."""
    loss, lse = _new_rows(logits), _new_rows(logits)
    launch_cross_entropy(
        logits, targets, loss_out=loss, lse=lse,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
    )  # fmt: skip
    return loss, lse


@define_op("cross_entropy_bwd")
def _cross_entropy_bwd_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    grad_rows: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    """The gradient w.r.t. `logits` of ``sum(grad_rows * loss_rows)``, in a fresh (N, V) buffer."""
    grad = empty_output(logits.shape, dtype=logits.dtype, device=logits.device)
    launch_cross_entropy(
        logits, targets, lse=lse.contiguous(), grad_out=grad, grad_scale=grad_rows.float(),
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
    )  # fmt: skip
    return grad


@define_op("cross_entropy_fwd_bwd_", mutates_args=("logits",))
def _cross_entropy_fwd_bwd_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    grad_scale: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    """Per-row loss (N,) fp32; overwrites `logits` with ``grad_scale * dloss/dlogits``."""
    loss, lse = _new_rows(logits), _new_rows(logits)
    launch_cross_entropy(
        logits, targets, loss_out=loss, lse=lse, grad_out=logits, grad_scale=grad_scale,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
    )  # fmt: skip
    return loss


@define_op("scale_rows_", mutates_args=("x",))
def _scale_rows_op(x: torch.Tensor, scale: torch.Tensor) -> None:
    """``x *= scale`` for a 2-D `x` (unit stride along dim 1) and a fp32 `scale` of shape () or (rows,)."""
    n_rows, n_cols = x.shape
    if x.numel() == 0:
        return
    block = min(SCALE_ROWS_BLOCK if INTERPRETED else _SCALE_ROWS_BLOCK, triton.next_power_of_2(n_cols))
    wrap_triton(_scale_rows_kernel)[(n_rows, triton.cdiv(n_cols, block))](
        x, x.stride(0), scale, scale.stride(0) if scale.dim() else 0, n_cols, BLOCK=block, num_warps=8
    )


def scale_rows_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x *= scale`` in place for a gradient we own: x is (R, C) or (C,), scale is () or (R,). Returns x.

    Eagerly this is the Triton op, which moves no memory when scale == 1 (the usual grad_output) without a
    host sync to find out. Under torch.compile it is a plain mul_, which Inductor makes one in-place pass
    (the mutating custom op would cost a functionalisation copy first).
    """
    scale = scale.float()
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:  # traced (fake/functional tensors)
        return x.mul_(scale[:, None] if scale.dim() and x.dim() == 2 else scale)
    torch.ops.frontier.scale_rows_(x if x.dim() == 2 else x.view(1, -1), scale)
    return x


def _new_rows(logits: torch.Tensor) -> torch.Tensor:
    return empty_output(logits.shape[:1], dtype=torch.float32, device=logits.device)


def _fake_rows(logits: torch.Tensor) -> torch.Tensor:
    return logits.new_empty(logits.shape[:1], dtype=torch.float32)


@_cross_entropy_fwd_op.register_fake
def _(logits, targets, ignore_index, label_smoothing, z_loss):  # type: ignore[no-untyped-def]
    return _fake_rows(logits), _fake_rows(logits)


@_cross_entropy_bwd_op.register_fake
def _(logits, targets, lse, grad_rows, ignore_index, label_smoothing, z_loss):  # type: ignore[no-untyped-def]
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@_cross_entropy_fwd_bwd_op.register_fake
def _(logits, targets, grad_scale, ignore_index, label_smoothing, z_loss):  # type: ignore[no-untyped-def]
    return _fake_rows(logits)


@_scale_rows_op.register_fake
def _(x, scale):  # type: ignore[no-untyped-def]
    return None


def _fwd_setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    logits, targets, ctx.ignore_index, ctx.label_smoothing, ctx.z_loss = inputs
    _loss, lse = output
    ctx.save_for_backward(logits, targets, lse)
    ctx.mark_non_differentiable(lse)


def _fwd_backward(ctx, grad_rows, _grad_lse):  # type: ignore[no-untyped-def]
    logits, targets, lse = ctx.saved_tensors
    grad = torch.ops.frontier.cross_entropy_bwd(
        logits, targets, lse, grad_rows, ctx.ignore_index, ctx.label_smoothing, ctx.z_loss
    )
    return grad, None, None, None, None


_cross_entropy_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


class _CrossEntropyConsumingLogits(torch.autograd.Function):
    """Loss in the forward, gradient written over `logits` at the same time; backward only scales it."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, label_smoothing: float, z_loss: float,
        reduction: str,
    ) -> torch.Tensor:  # fmt: skip
        valid = targets != ignore_index
        if reduction == "mean":
            scale = 1.0 / valid.sum().clamp(min=1).to(torch.float32)  # () on the device: no host sync
        else:
            scale = torch.ones((), dtype=torch.float32, device=logits.device)
        loss_rows = torch.ops.frontier.cross_entropy_fwd_bwd_(
            logits, targets, scale, ignore_index, label_smoothing, z_loss
        )
        ctx.save_for_backward(logits)  # now holds the (scaled) gradient
        return _reduce(loss_rows, valid, reduction)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[no-untyped-def, override]
        (grad,) = ctx.saved_tensors
        scale_rows_(grad, grad_output)  # () or (N,) for reduction="none"
        return grad, None, None, None, None, None


# ------------------------------------------------------------------------------------------------ public


def check_loss_args(
    op: str, n_rows: int, targets: torch.Tensor, label_smoothing: float, z_loss: float, reduction: str
) -> None:
    """Validate the arguments shared by cross_entropy and fused_linear_cross_entropy (ValueError naming `op`)."""
    if targets.shape != (n_rows,):
        raise ValueError(f"{op}: targets have shape {tuple(targets.shape)}, expected ({n_rows},)")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{op}: targets must be int64 or int32, got {targets.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing={label_smoothing} is outside [0, 1]")
    if z_loss < 0.0:
        raise ValueError(f"{op}: z_loss={z_loss} must be >= 0")


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of (N, V) `logits` against (N,) `targets`; fp32 loss: a scalar, or (N,) for "none".

    "mean" averages over non-ignored rows (0 when all are ignored); "sum" adds them; z_loss adds
    ``z_loss * logsumexp(logits)^2`` per non-ignored row. With the Triton impl and autograd on, a non-leaf
    `logits` is CONSUMED: its storage receives the gradient (see the module docstring).
    impl: "auto" (Triton on CUDA for fp32/fp16/bf16 logits, else the reference), "triton", or "torch" (the
    reference); see frontier.kernels.dispatch.
    """
    if logits.dim() != 2:
        raise ValueError(f"cross_entropy: logits must be (N, V), got shape {tuple(logits.shape)}")
    check_loss_args("cross_entropy", logits.shape[0], targets, label_smoothing, z_loss, reduction)
    unsupported = None if logits.dtype in _DTYPES else f"takes fp32/fp16/bf16 logits, got {logits.dtype}"
    if resolve_impl(impl, logits.device, op="cross_entropy", unsupported=unsupported) == "torch":
        return cross_entropy_reference(
            logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
            reduction=reduction,
        )  # fmt: skip
    if logits.stride(-1) != 1:
        logits = logits.contiguous()  # a copy we own (so consuming it below is harmless)
    targets = targets.contiguous()
    if torch.is_grad_enabled() and logits.requires_grad and not logits.is_leaf:
        return _CrossEntropyConsumingLogits.apply(logits, targets, ignore_index, label_smoothing, z_loss, reduction)
    loss_rows, _lse = torch.ops.frontier.cross_entropy_fwd(logits, targets, ignore_index, label_smoothing, z_loss)
    return _reduce(loss_rows, targets != ignore_index, reduction)
