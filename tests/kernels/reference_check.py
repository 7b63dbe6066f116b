"""One check for every fused op: outputs and all input gradients against a float64 reference.

The kernel runs with poisoned output buffers (so unwritten elements show up as NaN); PyTorch's own
error is measured by running the reference at the kernel's precision on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from frontier.kernels.dispatch import poisoned_outputs
from tests.kernels.tolerance import ATOL, assert_close_to_reference

Op = Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]


def _as_tuple(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _atol(ref64: torch.Tensor, dtype: torch.dtype) -> float:
    # fp32: PyTorch's CPU reductions (pairwise, vectorised) can be luckier than a kernel's fp32 tree by an
    # ulp or two; allow 4 ulps of the output's scale. Half precisions: torch's own rounding dominates.
    if dtype == torch.float32 and ref64.numel():
        return max(ATOL[dtype], 4 * torch.finfo(dtype).eps * ref64.abs().max().item())
    return ATOL[dtype]


def check_against_reference(
    op: Op, reference: Op, inputs: Sequence[torch.Tensor], *, k: float = 2.0, seed: int = 0
) -> None:
    """Assert `op(*inputs)` and the gradients of every input that requires grad match `reference` in float64.

    `inputs` are the low-precision leaves fed to the kernel; float64 copies (same values) feed the truth.
    """
    needs_grad = [t for t in inputs if t.requires_grad]
    with poisoned_outputs():
        outs = _as_tuple(op(*inputs))
    gen = torch.Generator().manual_seed(seed + 1)
    grads_out = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]

    inputs64 = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    outs64 = _as_tuple(reference(*inputs64))
    inputs_lp = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    outs_lp = _as_tuple(reference(*inputs_lp))
    assert len(outs) == len(outs64)
    for i, (out, ref64, ref_lp) in enumerate(zip(outs, outs64, outs_lp, strict=True)):
        assert out.dtype == ref_lp.dtype, f"output {i}: dtype {out.dtype} != reference {ref_lp.dtype}"
        assert_close_to_reference(out, ref64, ref_lp, k=k, atol=_atol(ref64, out.dtype), name=f"output {i}")
    if not needs_grad:
        return

    with poisoned_outputs():
        grads = torch.autograd.grad(outs, needs_grad, grads_out)
    grads64 = torch.autograd.grad(outs64, [t for t in inputs64 if t.requires_grad], [g.double() for g in grads_out])
    grads_lp = torch.autograd.grad(outs_lp, [t for t in inputs_lp if t.requires_grad], grads_out)
    names = [f"grad of input {i}" for i, t in enumerate(inputs) if t.requires_grad]
    for name, g, g64, g_lp in zip(names, grads, grads64, grads_lp, strict=True):
        assert g.dtype == g_lp.dtype, f"{name}: dtype {g.dtype} != reference {g_lp.dtype}"
        assert_close_to_reference(g, g64, g_lp, k=k, atol=_atol(g64, g.dtype), name=name)


def leaves(*tensors: torch.Tensor, requires_grad: bool = True) -> list[torch.Tensor]:
    """Detached leaf copies (requiring grad) of freshly generated tensors."""
    return [t.detach().requires_grad_(requires_grad) for t in tensors]
