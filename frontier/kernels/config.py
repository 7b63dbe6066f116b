"""Schema of kernel selection: which implementation each fused op uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# auto: Triton on CUDA devices, the PyTorch reference elsewhere (the interpreter is for tests).
Impl = Literal["auto", "triton", "torch"]


@dataclass
class KernelsConfig:
    attention: Literal["auto", "triton", "torch", "sdpa"] = "auto"
    cross_entropy: Impl = "auto"
    fused_linear_cross_entropy: bool = False
    rms_norm: Impl = "auto"
    rope: Impl = "auto"
    swiglu: Impl = "auto"
