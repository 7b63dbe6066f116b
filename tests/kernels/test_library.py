"""How the ops are registered (frontier.kernels.library): custom ops under the interpreter, triton ops on a
GPU build (checked in a process without TRITON_INTERPRET; no GPU needed), and every public op compiled with
torch.compile(fullgraph=True) by Inductor on the CPU against eager (there the op is opaque)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from frontier.kernels import library
from frontier.kernels.attention import attention
from frontier.kernels.attention_triton import attn_fwd_kernel
from frontier.kernels.cross_entropy import cross_entropy
from frontier.kernels.dispatch import triton_available
from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
from frontier.kernels.geglu import geglu
from frontier.kernels.interpreter import INTERPRETED
from frontier.kernels.rms_norm import rms_norm
from frontier.kernels.rope import rope
from frontier.kernels.swiglu import swiglu

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton")

# Every op of the op modules, with the arguments it writes in place (what its schema must declare).
OPS = {
    "attention_fwd": (),
    "attention_bwd": (),
    "cross_entropy_fwd": (),
    "cross_entropy_bwd": (),
    "cross_entropy_fwd_bwd_": ("logits",),
    "scale_rows_": ("x",),
    "fused_linear_cross_entropy": (),
    "fused_linear_cross_entropy_bwd": (),
    "rms_norm": (),
    "rms_norm_backward": (),
    "rope": (),
    "rope_backward": (),
    "swiglu": (),
    "swiglu_backward": (),
    "geglu": (),
    "geglu_backward": (),
}
OP_MODULES = ("attention", "cross_entropy", "fused_linear_cross_entropy", "rms_norm", "rope", "swiglu", "geglu")

# Run without the interpreter: which kind of op torch.library registered, and each op's mutated arguments.
_INTROSPECT = f"""
import importlib, json
import torch
from torch._library.triton import get_triton_kernels_for_op, triton_ops_to_kernels
from frontier.kernels import library
from frontier.kernels.interpreter import INTERPRETED
for module in {OP_MODULES!r}:
    importlib.import_module("frontier.kernels." + module)
ops = {{}}
for name in {sorted(OPS)!r}:
    qualname = "frontier::" + name
    schema = getattr(torch.ops.frontier, name).default._schema
    ops[name] = {{
        "triton_op": qualname in triton_ops_to_kernels,
        "kernels": sorted(k.__name__ for k in get_triton_kernels_for_op(qualname)),
        "mutates": sorted(a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write),
    }}
print(json.dumps({{"interpreted": INTERPRETED, "kind": library.op_kind(), "ops": ops}}))
"""


def _registered_ops() -> list[str]:
    return sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("frontier::"))


def _mutated(name: str) -> tuple[str, ...]:
    schema = getattr(torch.ops.frontier, name).default._schema
    return tuple(a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write)


def test_every_op_is_listed_once() -> None:
    # OPS is what the other tests check: an op added to a module without being listed here fails this.
    csrc_ops = {"fused_adamw_", "nonfinite_check_"}  # the C++ extension's, when it is loaded
    assert [op for op in _registered_ops() if op not in csrc_ops] == sorted(OPS)


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter's registration")
def test_under_the_interpreter_every_op_is_an_opaque_custom_op() -> None:
    from torch._library.triton import triton_ops_to_kernels

    assert library.op_kind() == "custom_op"
    assert type(attn_fwd_kernel).__name__ == "InterpretedFunction"  # what INTERPRETED stands for
    for name, mutates in OPS.items():
        assert f"frontier::{name}" not in triton_ops_to_kernels, name
        assert _mutated(name) == mutates, name


def test_without_the_interpreter_every_op_is_a_triton_op() -> None:
    # A GPU build's registration, found without a GPU: importing the modules only decorates the kernels.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _INTROSPECT], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["interpreted"] is False and report["kind"] == "triton_op"
    for name, mutates in OPS.items():
        op = report["ops"][name]
        assert op["triton_op"], f"frontier::{name} is not a triton_op on a GPU build"
        assert op["kernels"], f"torch.library found no Triton kernel in frontier::{name}"
        assert tuple(op["mutates"]) == mutates, name


# ------------------------------------------------------------- torch.compile(fullgraph=True) vs eager


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _rope_case() -> tuple[Callable[..., torch.Tensor], list[torch.Tensor]]:
    seq, dim = 5, 8
    angles = torch.arange(seq)[:, None] * torch.arange(1, dim // 2 + 1)[None, :] * 0.1
    cos, sin = torch.cat([angles.cos()] * 2, -1)[None], torch.cat([angles.sin()] * 2, -1)[None]  # (1, S, D)

    def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q2, k2 = rope(q, k, cos, sin, impl="triton")
        return torch.cat([q2.flatten(), k2.flatten()])

    return fn, [_rand(2, 4, seq, dim, seed=1), _rand(2, 2, seq, dim, seed=2)]


def _cases() -> dict[str, tuple[Callable[..., torch.Tensor], list[torch.Tensor]]]:
    targets = torch.tensor([3, -100, 0, 39, 7, 12])
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])
    return {
        "rms_norm": (lambda x, w: rms_norm(x, w, 1e-5, impl="triton"), [_rand(3, 5, 24, seed=3), _rand(24, seed=4)]),
        "swiglu": (lambda a, b: swiglu(a, b, impl="triton"), [_rand(3, 37, seed=5), _rand(3, 37, seed=6)]),
        "geglu": (lambda a, b: geglu(a, b, impl="triton"), [_rand(3, 37, seed=13), _rand(3, 37, seed=14)]),
        "rope": _rope_case(),
        "attention": (
            lambda q, k, v: attention(q, k, v, doc_ids=docs, impl="triton"),
            [_rand(1, 2, 9, 16, seed=7), _rand(1, 1, 9, 16, seed=8), _rand(1, 1, 9, 16, seed=9)],
        ),
        # x * 2: a non-leaf, so the in-place (logits-consuming) op runs, functionalised by the compiler
        "cross_entropy": (
            lambda x: cross_entropy(x * 2, targets, label_smoothing=0.1, z_loss=1e-3, impl="triton"),
            [_rand(6, 40, seed=10)],
        ),
        "fused_linear_cross_entropy": (
            lambda h, w: fused_linear_cross_entropy(h, w, targets, z_loss=1e-3, chunk_size=4, impl="triton"),
            [_rand(6, 8, seed=11), _rand(40, 8, seed=12)],
        ),
    }


def _forward_backward(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    grad_out = _rand(*out.shape, seed=99)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out)]


@pytest.mark.parametrize("op", list(_cases()))
def test_compiled_fullgraph_matches_eager(op: str) -> None:
    # Inductor on the CPU: under the interpreter the op is opaque (its fake gives the shapes, the call
    # runs the same kernels), so compiled and eager agree; on a GPU the same test traces the kernels.
    fn, inputs = _cases()[op]
    torch._dynamo.reset()
    eager = _forward_backward(fn, inputs)
    compiled = _forward_backward(torch.compile(fn, fullgraph=True), inputs)
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want)
