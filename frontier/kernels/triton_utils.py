"""What the kernel modules take from Triton, importable on machines without it.

Triton is a Linux/x86 dependency (see pyproject.toml). Without it the op modules still import (their
kernels are defined but never launched: `resolve_impl` answers "torch"), so the PyTorch references
keep working everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from frontier.kernels.interpreter import ROUND_BF16_BY_HAND

try:
    import triton
    import triton.language as tl

    jit: Callable[[Any], Any] = triton.jit
    # A global a jitted function may read (Triton accepts only constexpr globals); a constant per process.
    _ROUND_BF16_BY_HAND = tl.constexpr(ROUND_BF16_BY_HAND)
except ImportError:  # pragma: no cover - exercised only on platforms without Triton
    triton = None
    tl = None
    _ROUND_BF16_BY_HAND = ROUND_BF16_BY_HAND

    def jit(fn: Any) -> Any:
        return fn


__all__ = ["jit", "tl", "to_dtype", "triton"]


@jit
def to_dtype(x, DTYPE: tl.constexpr):
    """Cast fp32 `x` to DTYPE (a constexpr dtype, e.g. ``PTR.dtype.element_ty``), rounding to nearest even.

    That is the GPU's cast; under the interpreter, which truncates to bfloat16, the rounding is done by hand
    (see frontier.kernels.interpreter), so tests see the numbers a GPU computes.
    """
    if _ROUND_BF16_BY_HAND and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # add half an ulp of bf16, ties to even, then truncate
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x == x, rounded, x.to(tl.bfloat16))  # NaN bit patterns must not carry into the sign
    else:
        return x.to(DTYPE)
