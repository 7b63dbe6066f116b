"""geglu: Triton kernel (interpreter on CPU) against the float64 reference (gelu_tanh(gate) * up)."""

from __future__ import annotations

import zlib

import pytest
import torch

from frontier.kernels.geglu import geglu, geglu_reference
from tests.kernels.reference_check import check_against_reference, leaves

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return geglu(gate, up, impl="triton")


def _inputs(shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{shape}{dtype}".encode()))
    # gate spread over the tanh GELU's curved region and both tails
    gate = (3 * torch.randn(shape, generator=gen)).to(dtype)
    up = torch.randn(shape, generator=gen).to(dtype)
    return leaves(gate, up)


# (1, 96): one row; (3, 5, 127): odd width; (2, 4099): crosses a block boundary with a ragged tail
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 96), (3, 5, 127), (2, 4099)], ids=str)
def test_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    check_against_reference(_triton, geglu_reference, _inputs(shape, dtype))


def test_non_contiguous_inputs() -> None:
    gate, up = _inputs((6, 40), torch.float32)
    check_against_reference(_triton, geglu_reference, leaves(gate.detach().t(), up.detach().t()))


def test_extreme_gates_stay_finite() -> None:
    gate = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    up = torch.ones_like(gate)
    check_against_reference(_triton, geglu_reference, leaves(gate, up))


def test_opcheck() -> None:
    gate, up = _inputs((4, 33), torch.float32)
    torch.library.opcheck(torch.ops.frontier.geglu.default, (gate, up))
    torch.library.opcheck(torch.ops.frontier.geglu_backward.default, (torch.randn(4, 33), gate.detach(), up.detach()))


def test_impl_torch_is_the_reference() -> None:
    gate, up = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(geglu(gate, up, impl="torch"), geglu_reference(gate, up))


def test_reference_is_gemmas_activation() -> None:
    # Gemma's MLP: act_fn(gate_proj(x)) * up_proj(x) with ACT2FN["gelu_pytorch_tanh"]
    from transformers.activations import ACT2FN

    gate, up = torch.randn(3, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    assert torch.equal(geglu_reference(gate, up), ACT2FN["gelu_pytorch_tanh"](gate) * up)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="geglu: gate"):
        geglu(torch.randn(2, 8), torch.randn(2, 9))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_fullgraph_matches_eager(dtype: torch.dtype) -> None:
    gate, up = (t.detach().cuda().requires_grad_() for t in _inputs((4, 256, 1376), dtype))
    compiled = torch.compile(_triton, fullgraph=True)
    y_eager, y_comp = _triton(gate, up), compiled(gate, up)
    dy = torch.randn_like(y_eager)
    torch.testing.assert_close(y_comp, y_eager, rtol=0, atol=0)
    g_eager = torch.autograd.grad(y_eager, (gate, up), dy)
    g_comp = torch.autograd.grad(y_comp, (gate, up), dy)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
