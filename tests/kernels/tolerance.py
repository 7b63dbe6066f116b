"""Tolerances that constrain: a kernel's error against a float64 reference must be at most
k times PyTorch's own error at the same precision, plus a small absolute slack.

Usage::

    ref64 = reference(*[x.double() for x in inputs])        # the truth
    ref_lp = reference(*inputs)                              # PyTorch at the kernel's precision
    assert_close_to_reference(out, ref64, ref_lp)            # out: the kernel's result
"""

from __future__ import annotations

import torch

# Slack for results whose float64 error is ~0 in PyTorch too (exact paths), by dtype.
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


def max_abs_err(x: torch.Tensor, ref64: torch.Tensor) -> float:
    return (x.detach().double().cpu() - ref64.detach().double().cpu()).abs().max().item() if x.numel() else 0.0


def assert_close_to_reference(
    out: torch.Tensor,
    ref64: torch.Tensor,
    ref_lowp: torch.Tensor,
    *,
    k: float = 2.0,
    atol: float | None = None,
    name: str = "output",
) -> None:
    """Assert ``max|out - ref64| <= k * max|ref_lowp - ref64| + atol`` and that `out` is finite."""
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    finite_ref = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(out.detach().cpu()), finite_ref.cpu()), f"{name}: non-finite values (unwritten?)"
    if atol is None:
        atol = ATOL.get(ref_lowp.dtype, 1e-6)
    err = max_abs_err(out, ref64)
    torch_err = max_abs_err(ref_lowp, ref64)
    bound = k * torch_err + atol
    assert err <= bound, f"{name}: max error {err:.3g} > {k}x torch's {torch_err:.3g} + {atol:.1g}"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (or the max int) so unwritten elements are caught."""
    if t.dtype.is_floating_point:
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max)
