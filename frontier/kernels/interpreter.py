"""Everything Frontier's kernels do differently under Triton's interpreter (TRITON_INTERPRET=1), in one place.

The interpreter (the CPU test suite's way to run Triton) executes each program of a kernel in numpy, one
after another, on CPU tensors. It is not a GPU, and where it behaves differently the kernels are given a
flag or a size chosen here; they carry no interpreter checks of their own:

* Ops. ``torch.library.wrap_triton`` cannot trace interpreted kernels, so there ops are opaque custom ops
  instead of triton ops (frontier.kernels.library reads :data:`INTERPRETED`).
* Casts. The interpreter truncates fp32 -> bfloat16 where a GPU rounds to nearest even, leaving a kernel up
  to 1 ulp off and failing tolerances a GPU run passes. ``triton_utils.to_dtype`` rounds by hand on the
  bit pattern when :data:`ROUND_BF16_BY_HAND` is set (a few integer ops; on a GPU it is the plain cast).
* Dots. The interpreter's bf16 ``tl.dot`` multiplies raw bit patterns (garbage). Attention's kernels take
  an ``F32`` flag that feeds the dot fp32 copies of bf16 operands (exact: same products, fp32 sums):
  :func:`dot_in_fp32`.
* Sizes. Programs run one by one in numpy, so small blocks keep tests fast, and make the tests' odd shapes
  cross several blocks (masks, online softmax): :data:`ATTENTION_BLOCKS`, :data:`CROSS_ENTROPY_MAX_BLOCK_V`,
  :data:`SCALE_ROWS_BLOCK`; a few persistent programs suffice: :data:`PERSISTENT_PROGRAMS`.
* Launch options. The interpreter ignores num_warps; tests/kernels/conftest.py refuses what a GPU refuses.
"""

from __future__ import annotations

import torch


def _interpreting() -> bool:
    # Triton's own switch, read when @triton.jit decorates a kernel: True means every kernel of this process
    # is an InterpretedFunction (TRITON_INTERPRET must be set before Triton is imported).
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - platforms without Triton launch no kernel at all
        return False
    return bool(knobs.runtime.interpret)


INTERPRETED: bool = _interpreting()

ROUND_BF16_BY_HAND: bool = INTERPRETED

# Attention's block sizes in the interpreter (BLOCK_M queries, BLOCK_N keys): the odd-shape tests
# (S = 67, 127) then cross several blocks and end mid-block; no num_warps/num_stages (ignored there).
ATTENTION_BLOCKS: dict[str, dict[str, int]] = {
    "fwd": {"BLOCK_M": 32, "BLOCK_N": 16},
    "dq": {"BLOCK_M": 32, "BLOCK_N": 16},
    "dkdv": {"BLOCK_M": 16, "BLOCK_N": 32},
    "pre": {"BLOCK_M": 32},
}

CROSS_ENTROPY_MAX_BLOCK_V = 256  # an odd vocabulary of a few hundred exercises the online softmax
SCALE_ROWS_BLOCK = 256
PERSISTENT_PROGRAMS = 4  # reductions across rows: programs run one after another, a few suffice


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The F32 flag of attention's kernels: widen bf16 dot operands to fp32 (only the interpreter needs it)."""
    return INTERPRETED and dtype == torch.bfloat16
