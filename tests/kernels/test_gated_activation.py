"""swiglu and geglu (frontier.kernels.gated_activation's two ops): the Triton kernel (interpreter on CPU) against
the float64 reference, op by op; what differs between them (the activation itself) is in test_swiglu.py and
test_geglu.py."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest
import torch

from frontier.kernels.geglu import geglu, geglu_reference
from frontier.kernels.swiglu import swiglu, swiglu_reference
from tests.kernels.reference_check import check_against_reference, leaves

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OPS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "swiglu": (swiglu, swiglu_reference),
    "geglu": (geglu, geglu_reference),
}
op_names = pytest.mark.parametrize("name", list(OPS))


def _triton(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    op = OPS[name][0]
    return lambda gate, up: op(gate, up, impl="triton")


def _inputs(shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{shape}{dtype}".encode()))
    # gate spread over the activations' curved region and both tails
    gate = (3 * torch.randn(shape, generator=gen)).to(dtype)
    up = torch.randn(shape, generator=gen).to(dtype)
    return leaves(gate, up)


# (1, 96): one row; (3, 5, 127): odd width; (2, 4099): crosses a block boundary with a ragged tail
@op_names
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 96), (3, 5, 127), (2, 4099)], ids=str)
def test_matches_reference(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    check_against_reference(_triton(name), OPS[name][1], _inputs(shape, dtype))


@op_names
def test_non_contiguous_inputs(name: str) -> None:
    gate, up = _inputs((6, 40), torch.float32)
    check_against_reference(_triton(name), OPS[name][1], leaves(gate.detach().t(), up.detach().t()))


@op_names
def test_extreme_gates_stay_finite(name: str) -> None:
    gate = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    check_against_reference(_triton(name), OPS[name][1], leaves(gate, torch.ones_like(gate)))


@op_names
def test_opcheck(name: str) -> None:
    gate, up = _inputs((4, 33), torch.float32)
    ops = getattr(torch.ops.frontier, name), getattr(torch.ops.frontier, f"{name}_backward")
    torch.library.opcheck(ops[0].default, (gate, up))
    torch.library.opcheck(ops[1].default, (torch.randn(4, 33), gate.detach(), up.detach()))


@op_names
def test_impl_torch_is_the_reference(name: str) -> None:
    op, reference = OPS[name]
    gate, up = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(op(gate, up, impl="torch"), reference(gate, up))


@op_names
def test_rejects_mismatched_shapes(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: gate"):
        OPS[name][0](torch.randn(2, 8), torch.randn(2, 9))


@pytest.mark.gpu
@op_names
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_fullgraph_matches_eager(name: str, dtype: torch.dtype) -> None:
    gate, up = (t.detach().cuda().requires_grad_() for t in _inputs((4, 256, 1376), dtype))
    eager = _triton(name)
    compiled = torch.compile(eager, fullgraph=True)
    y_eager, y_comp = eager(gate, up), compiled(gate, up)
    dy = torch.randn_like(y_eager)
    torch.testing.assert_close(y_comp, y_eager, rtol=0, atol=0)
    g_eager = torch.autograd.grad(y_eager, (gate, up), dy)
    g_comp = torch.autograd.grad(y_comp, (gate, up), dy)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
