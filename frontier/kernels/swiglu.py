"""SwiGLU gating: ``silu(gate) * up``, the middle of Llama's MLP (down_proj(silu(gate_proj(x)) * up_proj(x))).

Three faces, one name:
  * ``swiglu_reference`` -- ``F.silu(gate) * up`` as LlamaMLP computes it (the fallback);
  * ``torch.ops.frontier.swiglu`` / ``swiglu_backward`` -- elementwise Triton kernels (a torch.library op from
    frontier.kernels.library + fake + autograd); the backward recomputes silu from the saved inputs instead of storing it;
  * ``swiglu(gate, up, impl=...)`` -- the public op.

Math in fp32, one rounding per output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import wrap_triton

from frontier.kernels.dispatch import empty_output, resolve_impl
from frontier.kernels.library import define_op
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton

_BLOCK = 4096  # elements per program: 16 per thread at 8 warps, enough bytes in flight to saturate HBM
_NUM_WARPS = 8


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """LlamaMLP's activation with hidden_act="silu"."""
    return F.silu(gate) * up


@jit
def _swiglu_fwd_kernel(GATE, UP, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    y = a * tl.sigmoid(a) * b
    tl.store(Y + offs, to_dtype(y, Y.dtype.element_ty), mask=mask)


@jit
def _swiglu_bwd_kernel(DY, GATE, UP, DGATE, DUP, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    silu = a * sig
    # silu'(a) = sig * (1 + a * (1 - sig))
    tl.store(DGATE + offs, to_dtype(dy * b * sig * (1.0 + a * (1.0 - sig)), DGATE.dtype.element_ty), mask=mask)
    tl.store(DUP + offs, to_dtype(dy * silu, DUP.dtype.element_ty), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, _BLOCK),)


@define_op("swiglu")
def _swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    y = empty_output(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    if y.numel():
        wrap_triton(_swiglu_fwd_kernel)[_grid(y.numel())](gate, up, y, y.numel(), BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return y


@define_op("swiglu_backward")
def _swiglu_backward_op(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dgate = empty_output(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = empty_output(up.shape, dtype=up.dtype, device=up.device)
    if dy.numel():
        wrap_triton(_swiglu_bwd_kernel)[_grid(dy.numel())](
            dy, gate, up, dgate, dup, dy.numel(), BLOCK=_BLOCK, num_warps=_NUM_WARPS
        )
    return dgate, dup


@_swiglu_op.register_fake
def _(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return gate.new_empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype))


@_swiglu_backward_op.register_fake
def _(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):  # type: ignore[no-untyped-def]
    gate, up = ctx.saved_tensors
    return torch.ops.frontier.swiglu_backward(dy, gate, up)


_swiglu_op.register_autograd(_backward, setup_context=_setup_context)


def swiglu(gate: torch.Tensor, up: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """``silu(gate) * up`` for two tensors of the same shape.

    impl: "auto" (Triton on CUDA, else the reference), "triton", or "torch" (the reference).
    """
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have the same shape")
    if resolve_impl(impl, gate.device, op="swiglu") == "torch":
        return swiglu_reference(gate, up)
    return torch.ops.frontier.swiglu(gate, up)
