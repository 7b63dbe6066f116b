"""SwiGLU gating: ``silu(gate) * up``, the middle of Llama's MLP (down_proj(silu(gate_proj(x)) * up_proj(x))).

Three faces, one name:
  * ``swiglu_reference`` -- ``F.silu(gate) * up`` as LlamaMLP computes it (the fallback);
  * ``torch.ops.frontier.swiglu`` / ``swiglu_backward`` -- elementwise Triton kernels (a torch.library op from
    frontier.kernels.library + fake + autograd); the backward recomputes silu from the saved inputs instead of storing it;
  * ``swiglu(gate, up, impl=...)`` -- the public op.

The kernels, the op registration and the dispatch are shared with geglu: frontier.kernels.gated_activation.
Math in fp32, one rounding per output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frontier.kernels.gated_activation import SILU, define_gated_op, gated


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """LlamaMLP's activation with hidden_act="silu"."""
    return F.silu(gate) * up


_SWIGLU = define_gated_op("swiglu", SILU)


def swiglu(gate: torch.Tensor, up: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """``silu(gate) * up`` for two tensors of the same shape.

    impl: "auto" (Triton on CUDA, else the reference), "triton", or "torch" (the reference).
    """
    return gated("swiglu", _SWIGLU, swiglu_reference, gate, up, impl)
