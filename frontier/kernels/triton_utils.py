"""What the kernel modules take from Triton, importable on machines without it.

Triton is a Linux/x86 dependency (see pyproject.toml). Without it the op modules still import (their
kernels are defined but never launched: `resolve_impl` answers "torch"), so the PyTorch references
keep working everywhere.

`to_dtype` stores fp32 results with round-to-nearest-even on GPU and in the interpreter alike:
Triton's interpreter (TRITON_INTERPRET=1, the CPU test suite) truncates fp32 -> bfloat16 where the
GPU rounds, which leaves a kernel up to 1 ulp off and failing tolerances a GPU run would pass.
Rounding by hand on the bit pattern costs a few integer ops per element (free in memory-bound kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import triton
    import triton.language as tl

    jit: Callable[[Any], Any] = triton.jit
except ImportError:  # pragma: no cover - exercised only on platforms without Triton
    triton = None
    tl = None

    def jit(fn: Any) -> Any:
        return fn


__all__ = ["jit", "tl", "to_dtype", "triton"]


@jit
def to_dtype(x, DTYPE: tl.constexpr):
    """Cast fp32 `x` to DTYPE (a constexpr dtype, e.g. ``PTR.dtype.element_ty``), rounding to nearest even."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # add half an ulp of bf16, ties to even, then truncate
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x == x, rounded, x.to(tl.bfloat16))  # NaN bit patterns must not carry into the sign
    else:
        return x.to(DTYPE)
