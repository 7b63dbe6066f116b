"""GeGLU gating with the tanh GELU: ``gelu_tanh(gate) * up``, the middle of Gemma's MLP
(down_proj(gelu_pytorch_tanh(gate_proj(x)) * up_proj(x))).

Three faces, one name:
  * ``geglu_reference`` -- ``F.gelu(gate, approximate="tanh") * up`` as GemmaMLP computes it (the fallback);
  * ``torch.ops.frontier.geglu`` / ``geglu_backward`` -- elementwise Triton kernels (a torch.library op from
    frontier.kernels.library + fake + autograd); the backward recomputes the GELU from the saved inputs instead
    of storing it;
  * ``geglu(gate, up, impl=...)`` -- the public op.

The kernels, the op registration and the dispatch are shared with swiglu: frontier.kernels.gated_activation.
Math in fp32, one rounding per output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frontier.kernels.gated_activation import GELU_TANH, define_gated_op, gated


def geglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """GemmaMLP's activation with hidden_activation="gelu_pytorch_tanh"."""
    return F.gelu(gate, approximate="tanh") * up


_GEGLU = define_gated_op("geglu", GELU_TANH)


def geglu(gate: torch.Tensor, up: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """``gelu_tanh(gate) * up`` for two tensors of the same shape.

    impl: "auto" (Triton on CUDA, else the reference), "triton", or "torch" (the reference).
    """
    return gated("geglu", _GEGLU, geglu_reference, gate, up, impl)
