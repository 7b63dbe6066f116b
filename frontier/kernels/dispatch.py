"""Choosing an implementation for a fused op: what ``impl="auto"`` means, for every op, in one rule.

Every op in frontier.kernels takes ``impl="auto" | "triton" | "torch"`` (attention adds "sdpa") and calls
:func:`resolve_impl` once per call, telling it whether its Triton kernel handles these inputs and what it
falls back to. The rule:

* ``"auto"``   -> ``"triton"`` when the tensors are on a CUDA device, Triton is installed and the op's kernel
  handles the inputs; otherwise the op's *fallback*: its fastest PyTorch path. Nothing else decides (not the
  caller, not the model code), so ``auto`` means the same thing at every layer.
* ``"triton"`` -> the kernel: on CUDA, or on the CPU only under Triton's interpreter (``TRITON_INTERPRET=1``,
  which the test suite sets). Inputs the kernel does not handle, no Triton, or a CPU tensor without the
  interpreter raise a :class:`KernelUnavailableError` naming the op and the reason.
* ``"torch"``  -> the pure-PyTorch reference (the op's ``*_reference``: what the tests compare against).
* ``"sdpa"``   -> (attention only) ``frontier.kernels.attention.attention_sdpa``: torch's
  scaled_dot_product_attention, the one SDPA path of Frontier.

=========================== ============================================== ===================================
op                          Triton kernel handles                          fallback of ``auto``
=========================== ============================================== ===================================
rms_norm                    rows of at most ``MAX_FUSED_COLS`` elements    ``torch`` (rms_norm_reference)
rope                        everything the op accepts                      ``torch`` (rope_reference)
swiglu                      everything the op accepts                      ``torch`` (swiglu_reference)
geglu                       everything the op accepts                      ``torch`` (geglu_reference)
cross_entropy               fp32 / fp16 / bf16 logits                      ``torch`` (cross_entropy_reference)
fused_linear_cross_entropy  fp32 / fp16 / bf16 hidden and weight           ``torch`` (the eager linear + loss)
attention                   power-of-two head dim in [16, 128],            ``sdpa`` (attention_sdpa: the
                            fp32 / fp16 / bf16                             O(S^2) reference is for tests)
=========================== ============================================== ===================================

So on a CPU ``auto`` is the fallback (the interpreter is for tests: ``"triton"`` asks for it explicitly).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterable, Iterator, Sequence

import torch

from frontier.errors import FrontierError
from frontier.kernels.interpreter import PERSISTENT_PROGRAMS

IMPLS = ("auto", "triton", "torch")

# What "auto" runs when Triton cannot (the module docstring's table): the op's fastest PyTorch path.
AUTO_FALLBACK: dict[str, str] = {
    "rms_norm": "torch",
    "rope": "torch",
    "swiglu": "torch",
    "geglu": "torch",
    "cross_entropy": "torch",
    "fused_linear_cross_entropy": "torch",
    "attention": "sdpa",
}


class KernelUnavailableError(FrontierError):
    """The requested kernel implementation cannot run here (for example Triton on a CPU tensor)."""


# Whether Triton is installed, looked up once without importing it (a plain constant also keeps
# resolve_impl traceable by torch.compile with fullgraph=True).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when Triton is installed (it still needs a CUDA device, or the interpreter, to launch)."""
    return _TRITON_INSTALLED


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET is set (tests set it before Triton is imported, as Triton requires)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(
    impl: str,
    device: torch.device | str,
    *,
    op: str = "kernel",
    extra: Iterable[str] = (),
    unsupported: str | None = None,
) -> str:
    """Turn a requested implementation into the one that will run for a tensor on `device` (the module's rule).

    `op` names the operation in error messages; `extra` lists op-specific names accepted as is.
    `unsupported`: why the Triton kernel cannot take these inputs (None when it can). Instead of Triton,
    "auto" runs ``AUTO_FALLBACK[op]`` ("torch" for an op not listed).
    """
    device = torch.device(device)
    allowed = (*IMPLS, *extra)
    if impl not in allowed:
        raise KernelUnavailableError(f"{op}: impl={impl!r} is not one of {', '.join(allowed)}")
    if impl == "auto":
        return (
            "triton"
            if device.type == "cuda" and triton_available() and unsupported is None
            else AUTO_FALLBACK.get(op, "torch")
        )
    if impl != "triton":
        return impl
    if unsupported is not None:
        raise KernelUnavailableError(f"{op}: the Triton kernel {unsupported}; use impl='auto' or 'torch'")
    if not triton_available():
        raise KernelUnavailableError(
            f"{op}: impl='triton' was requested but Triton is not installed; use 'torch' or 'auto'"
        )
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu" and triton_interpreting():
        return "triton"
    raise KernelUnavailableError(
        f"{op}: impl='triton' needs a CUDA tensor (got one on {device}); "
        "use impl='torch' or 'auto', or set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter"
    )


# --- launch shapes shared by the row-wise kernels (rms_norm, rope; cross_entropy may reuse) ---

MAX_FUSED_COLS = 65536  # one row must fit in one program's registers
TILE_ELEMENTS = 4096  # elements one program handles per step: ~16 fp32 per thread at 8 warps


def row_tile(n_cols: int, op: str = "kernel") -> tuple[int, int, int]:
    """(block_rows, block_cols, num_warps) for a kernel that keeps whole rows of `n_cols` in one program.

    Narrow rows are stacked so one program still moves ~TILE_ELEMENTS (a hidden size of 64 gets 64 rows
    per program instead of a mostly idle one); wide rows get one row and more warps, keeping ~16 fp32
    values per thread (no register spills on H100 up to a hidden size of 16k).
    """
    if n_cols > MAX_FUSED_COLS:
        raise KernelUnavailableError(f"{op}: rows of {n_cols} elements exceed the fused limit {MAX_FUSED_COLS}")
    block_cols = max(16, 1 << (max(n_cols, 1) - 1).bit_length())
    block_rows = max(1, TILE_ELEMENTS // block_cols)
    return block_rows, block_cols, warps_for(block_rows * block_cols, most=32)


def warps_for(tile_elements: int, least: int = 4, most: int = 16) -> int:
    """num_warps for a program holding `tile_elements` values: one warp per 512 (~16 fp32 a thread),
    rounded down to a power of two (Triton's CUDA backend takes nothing else), within [least, most]."""
    warps = max(1, tile_elements // 512)
    return min(most, max(least, 1 << (warps.bit_length() - 1)))


def num_programs(device: torch.device) -> int:
    """How many persistent programs to launch for reductions across rows (each writes one partial sum).

    Two per SM on a GPU: a wide row (8 warps, ~100 registers a thread) leaves room for two programs per
    SM, enough to overlap one program's loads with the other's reduction, while the partial sums stay
    a few percent of the traffic. Elsewhere (the interpreter) see frontier.kernels.interpreter.
    """
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return PERSISTENT_PROGRAMS


# --- output buffers: kernels allocate through here so tests can catch elements a kernel never writes ---

_poison = False


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within this block, buffers from :func:`empty_output` start as NaN (max int for integer dtypes)."""
    global _poison
    previous, _poison = _poison, True
    try:
        yield
    finally:
        _poison = previous


def empty_output(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for a buffer the kernel fully overwrites (poisoned inside :func:`poisoned_outputs`)."""
    return _maybe_poison(torch.empty(tuple(shape), dtype=dtype, device=device))


def empty_output_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like`` (same layout as `t`) for a buffer the kernel fully overwrites."""
    return _maybe_poison(torch.empty_like(t))


def _maybe_poison(out: torch.Tensor) -> torch.Tensor:
    if _poison:
        out.fill_(float("nan") if out.dtype.is_floating_point else torch.iinfo(out.dtype).max)
    return out
