"""RMSNorm: ``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimension (Llama's LlamaRMSNorm).

Three faces, one name:
  * ``rms_norm_reference``  -- pure PyTorch, the exact formula of transformers' LlamaRMSNorm (the fallback);
  * ``torch.ops.frontier.rms_norm`` / ``rms_norm_backward`` -- Triton kernels behind torch.library ops
    (frontier.kernels.library: triton_op, custom_op under the interpreter) with a fake (shape-only)
    implementation for torch.compile and autograd registered on the forward op;
  * ``rms_norm(x, weight, eps, impl=...)`` -- the public op, which picks one of the two.

The kernel computes in fp32 and rounds once at the end (the reference rounds the normalised value to the
input dtype before the weight multiply, as Hugging Face does); the weight gradient is reduced in two
steps: each program sums its own block of rows into a fp32 partial row, then one torch sum adds the
partials.
"""

from __future__ import annotations

import torch
from torch.library import wrap_triton

from frontier.kernels.dispatch import MAX_FUSED_COLS, empty_output, num_programs, resolve_impl, row_tile
from frontier.kernels.library import define_op
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LlamaRMSNorm.forward, verbatim: fp32 statistics, normalised value rounded to x's dtype, then * weight."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


@jit
def _rms_norm_fwd_kernel(
    X, W, Y, RSTD, stride_x, stride_y, n_rows, n_cols, eps, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    eps = tl.cast(eps, tl.float32)  # fp32 math whoever launches (Inductor passes Python floats as fp64)
    # One tile of BLOCK_R whole rows; int64 row indices: row * stride may exceed 2**31.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)  # (BLOCK_R,)
    tl.store(RSTD + rows, rstd, mask=row_mask)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], to_dtype(y, Y.dtype.element_ty), mask=mask)


@jit
def _rms_norm_bwd_kernel(
    DY, X, W, RSTD, DX, DW_PARTIAL,
    stride_dy, stride_x, stride_dx,
    n_rows, n_cols, rows_per_program,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Program `pid` owns rows [pid * rows_per_program, +rows_per_program) (a multiple of BLOCK_R), walks
    # them a tile at a time and writes one fp32 partial weight-gradient row.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for r0 in range(row_start, row_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        x_hat = x * rstd[:, None]
        g = dy * w[None, :]
        # d/dx of x * rstd(x): rstd * (g - x_hat * mean(g * x_hat)) per row
        dx = rstd[:, None] * (g - x_hat * (tl.sum(g * x_hat, axis=1) / n_cols)[:, None])
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], to_dtype(dx, DX.dtype.element_ty), mask=mask)
        dw += dy * x_hat  # masked rows and columns load as 0 and add nothing
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw, axis=0), mask=col_mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View as (rows, hidden) with a unit stride along hidden (copies only when it must)."""
    t2 = t.reshape(-1, t.shape[-1])  # (N, H)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


@define_op("rms_norm")
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: returns (y, rstd) with rstd (fp32, one per row) saved for the backward."""
    x2, weight = _rows(x), weight.contiguous()  # (N, H), (H,)
    n_rows, n_cols = x2.shape
    y = empty_output(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = empty_output(x.shape[:-1], dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, rstd
    block_r, block_c, num_warps = row_tile(n_cols, "rms_norm")
    y2 = y.view(-1, n_cols)  # (N, H), fresh and contiguous
    wrap_triton(_rms_norm_fwd_kernel)[(triton.cdiv(n_rows, block_r),)](
        x2, weight, y2, rstd, x2.stride(0), y2.stride(0), n_rows, n_cols, eps,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return y, rstd


@define_op("rms_norm_backward")
def _rms_norm_backward_op(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton backward: returns (dx, dweight)."""
    x2, dy2, weight = _rows(x), _rows(dy), weight.contiguous()  # (N, H), (N, H), (H,)
    n_rows, n_cols = x2.shape
    dx = empty_output(x.shape, dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    block_r, block_c, num_warps = row_tile(n_cols, "rms_norm")
    tiles = triton.cdiv(n_rows, block_r)
    programs = min(num_programs(x.device), tiles)
    rows_per_program = triton.cdiv(tiles, programs) * block_r
    # (P, H): every program writes its whole row, also when its block of rows is empty
    dw_partial = empty_output((programs, n_cols), dtype=torch.float32, device=x.device)
    dx2 = dx.view(-1, n_cols)  # (N, H)
    wrap_triton(_rms_norm_bwd_kernel)[(programs,)](
        dy2, x2, weight, rstd, dx2, dw_partial,
        dy2.stride(0), x2.stride(0), dx2.stride(0),
        n_rows, n_cols, rows_per_program,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


@_rms_norm_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))
    return y, x.new_empty(x.shape[:-1], dtype=torch.float32)


@_rms_norm_backward_op.register_fake
def _(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, weight, _eps = inputs
    _y, rstd = output
    ctx.save_for_backward(x, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _backward(ctx, dy, _drstd):  # type: ignore[no-untyped-def]
    x, weight, rstd = ctx.saved_tensors
    dx, dw = torch.ops.frontier.rms_norm_backward(dy, x, weight, rstd)
    return dx, dw, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, impl: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dimension of `x` (any leading shape); `weight` has shape (hidden,).

    impl: "auto" (Triton on CUDA for rows of at most MAX_FUSED_COLS, else the reference), "triton", or
    "torch" (the reference); see frontier.kernels.dispatch.
    """
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")
    unsupported = None if x.shape[-1] <= MAX_FUSED_COLS else f"keeps whole rows of at most {MAX_FUSED_COLS} elements"
    if resolve_impl(impl, x.device, op="rms_norm", unsupported=unsupported) == "torch":
        return rms_norm_reference(x, weight, eps)
    y, _rstd = torch.ops.frontier.rms_norm(x, weight, eps)
    return y
