"""Gated activations ``act(gate) * up``: the elementwise middle of a gated MLP, ``down(act(gate(x)) * up(x))``.

The machinery shared by the public ops of this family, each in its own module with its own reference:
``frontier.kernels.swiglu`` (silu: Llama, Mistral, Qwen) and ``frontier.kernels.geglu`` (tanh GELU: Gemma).

  * one forward and one backward Triton kernel for every activation: ``ACT`` (a constexpr) picks the formula
    at compile time, so each activation gets its own specialised kernel and no runtime branch;
  * :func:`define_gated_op` registers ``frontier::<name>`` and ``frontier::<name>_backward`` for one
    activation (torch.library ops from frontier.kernels.library, fake implementations, autograd); the
    backward recomputes the activation from the saved inputs instead of storing it;
  * :func:`gated` is the body of each public op (shape check, then dispatch).

Math in fp32, one rounding per output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.library import wrap_triton

from frontier.kernels.dispatch import empty_output, resolve_impl
from frontier.kernels.library import NAMESPACE, define_op
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton

# Activation ids, the kernels' ACT. A jitted function may read only constexpr globals, hence the wrapped twins.
SILU = 0
GELU_TANH = 1
_GELU_TANH = tl.constexpr(GELU_TANH) if tl is not None else GELU_TANH

_BLOCK = 4096  # elements per program: 16 per thread at 8 warps, enough bytes in flight to saturate HBM
_NUM_WARPS = 8


@jit
def _gelu_tanh_2u(a):
    """2u of gelu_tanh(a) = 0.5 a (1 + tanh(u)), u = sqrt(2/pi) (a + 0.044715 a^3), and d(2u)/da."""
    return 1.5957691216057308 * (a + 0.044715 * a * a * a), 1.5957691216057308 * (1.0 + 0.134145 * a * a)


@jit
def _activation(a, ACT: tl.constexpr):
    """act(a) for fp32 `a`."""
    if ACT == _GELU_TANH:
        # 0.5 (1 + tanh(u)) == sigmoid(2u): no tanh needed, and no cancellation in 1 + tanh(u) for u << 0
        u2, _du2 = _gelu_tanh_2u(a)
        return a * tl.sigmoid(u2)
    else:
        return a * tl.sigmoid(a)


@jit
def _activation_and_grad(a, ACT: tl.constexpr):
    """(act(a), act'(a)) for fp32 `a`."""
    if ACT == _GELU_TANH:
        u2, du2 = _gelu_tanh_2u(a)
        s = tl.sigmoid(u2)
        # d(a s)/da = s + a s (1 - s) d(2u)/da, with 1 - s = sigmoid(-2u) (exact where s rounds to 1). The
        # product is formed small-first so that a saturated s (s (1 - s) == 0) never meets an infinite a^3.
        return a * s, s + (s * tl.sigmoid(-u2) * du2) * a
    else:
        sig = tl.sigmoid(a)
        return a * sig, sig * (1.0 + a * (1.0 - sig))  # silu'(a) = sig (1 + a (1 - sig))


@jit
def _gated_fwd_kernel(GATE, UP, Y, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    y = _activation(a, ACT) * b
    tl.store(Y + offs, to_dtype(y, Y.dtype.element_ty), mask=mask)


@jit
def _gated_bwd_kernel(DY, GATE, UP, DGATE, DUP, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    act, dact = _activation_and_grad(a, ACT)
    tl.store(DGATE + offs, to_dtype(dy * b * dact, DGATE.dtype.element_ty), mask=mask)
    tl.store(DUP + offs, to_dtype(dy * act, DUP.dtype.element_ty), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, _BLOCK),)


def _launch_forward(gate: torch.Tensor, up: torch.Tensor, activation: int) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    y = empty_output(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    if y.numel():
        wrap_triton(_gated_fwd_kernel)[_grid(y.numel())](
            gate, up, y, y.numel(), ACT=activation, BLOCK=_BLOCK, num_warps=_NUM_WARPS
        )
    return y


def _launch_backward(
    dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dgate = empty_output(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = empty_output(up.shape, dtype=up.dtype, device=up.device)
    if dy.numel():
        wrap_triton(_gated_bwd_kernel)[_grid(dy.numel())](
            dy, gate, up, dgate, dup, dy.numel(), ACT=activation, BLOCK=_BLOCK, num_warps=_NUM_WARPS
        )
    return dgate, dup


def define_gated_op(name: str, activation: int) -> torch._ops.OpOverloadPacket:
    """Register ``frontier::<name>`` (gate, up) -> act(gate) * up and ``frontier::<name>_backward`` (dy, gate, up)
    -> (dgate, dup) for `activation` (SILU or GELU_TANH), with fakes and autograd; returns the forward op."""

    @define_op(name)
    def forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return _launch_forward(gate, up, activation)

    @define_op(f"{name}_backward")
    def backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _launch_backward(dy, gate, up, activation)

    @forward.register_fake
    def _(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return gate.new_empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype))

    @backward.register_fake
    def _(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gate.new_empty(gate.shape), up.new_empty(up.shape)

    namespace = getattr(torch.ops, NAMESPACE)
    backward_op = getattr(namespace, f"{name}_backward")

    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(*inputs)

    def grad(ctx, dy):  # type: ignore[no-untyped-def]
        gate, up = ctx.saved_tensors
        return backward_op(dy, gate, up)

    forward.register_autograd(grad, setup_context=setup_context)
    return getattr(namespace, name)


def gated(
    name: str,
    op: torch._ops.OpOverloadPacket,
    reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    gate: torch.Tensor,
    up: torch.Tensor,
    impl: str,
) -> torch.Tensor:
    """The public op `name`: `reference` or the registered `op` on two tensors of the same shape, per `impl`."""
    if gate.shape != up.shape:
        raise ValueError(f"{name}: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have the same shape")
    if resolve_impl(impl, gate.device, op=name) == "torch":
        return reference(gate, up)
    return op(gate, up)
