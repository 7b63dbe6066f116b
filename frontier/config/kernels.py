"""Schema of kernel selection: which implementation each fused op uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# auto: Triton on CUDA when the op's kernel handles the inputs, else the op's fallback (the PyTorch
# reference; attention: SDPA). The one rule and its table: frontier.kernels.dispatch.
Impl = Literal["auto", "triton", "torch"]


@dataclass
class KernelsConfig:
    attention: Literal["auto", "triton", "torch", "sdpa"] = "auto"
    cross_entropy: Impl = "auto"
    fused_linear_cross_entropy: bool = False
    rms_norm: Impl = "auto"
    rope: Impl = "auto"
    swiglu: Impl = "auto"
    geglu: Impl = "auto"
