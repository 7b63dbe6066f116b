"""Implementation choice, launch shapes, poisoned buffers; the package itself imports nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from frontier.errors import FrontierError
from frontier.kernels import dispatch
from frontier.kernels.dispatch import (
    MAX_FUSED_COLS,
    KernelUnavailableError,
    empty_output,
    empty_output_like,
    poisoned_outputs,
    resolve_impl,
    row_tile,
)


def test_auto_picks_triton_on_cuda_and_the_reference_elsewhere() -> None:
    assert resolve_impl("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_impl("auto", "cpu") == "torch"
    assert resolve_impl("auto", "meta") == "torch"


def test_explicit_choices() -> None:
    assert resolve_impl("torch", "cuda") == "torch"
    assert resolve_impl("triton", "cuda") == "triton"
    assert resolve_impl("sdpa", "cpu", extra=("sdpa",)) == "sdpa"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", "cpu") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailableError, match=r"rms_norm: impl='triton' needs a CUDA tensor \(got one on cpu\)"):
        resolve_impl("triton", "cpu", op="rms_norm")


def test_without_triton_auto_falls_back_and_triton_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_TRITON_INSTALLED", False)
    assert resolve_impl("auto", "cuda") == "torch"
    with pytest.raises(KernelUnavailableError, match="swiglu: impl='triton' was requested but Triton is not installed"):
        resolve_impl("triton", "cuda", op="swiglu")


def test_unknown_impl_names_the_op_and_the_choices() -> None:
    with pytest.raises(KernelUnavailableError, match="rope: impl='cuda' is not one of auto, triton, torch") as info:
        resolve_impl("cuda", "cpu", op="rope")
    assert isinstance(info.value, FrontierError)  # ends a stage with one line, like every user error
    with pytest.raises(KernelUnavailableError):
        resolve_impl("sdpa", "cpu")  # only ops that list it accept it


@pytest.mark.parametrize(
    "n_cols, expected",
    [(1, (256, 16, 8)), (96, (32, 128, 8)), (127, (32, 128, 8)), (4096, (1, 4096, 8)), (16384, (1, 16384, 32))],
)
def test_row_tile_fills_a_program_with_whole_rows(n_cols: int, expected: tuple[int, int, int]) -> None:
    block_rows, block_cols, _ = tile = row_tile(n_cols)
    assert tile == expected
    assert block_cols >= n_cols and block_cols & (block_cols - 1) == 0 and block_rows & (block_rows - 1) == 0


def test_row_tile_refuses_rows_that_do_not_fit() -> None:
    with pytest.raises(KernelUnavailableError, match=f"rms_norm: rows of {MAX_FUSED_COLS + 1} elements"):
        row_tile(MAX_FUSED_COLS + 1, "rms_norm")


def test_poisoned_outputs_only_inside_the_block() -> None:
    with poisoned_outputs():
        assert torch.isnan(empty_output((3, 2), dtype=torch.float32, device=torch.device("cpu"))).all()
        ints = empty_output((4,), dtype=torch.int32, device=torch.device("cpu"))
        assert (ints == torch.iinfo(torch.int32).max).all()
        like = empty_output_like(torch.zeros(4, 6).t())
        assert like.stride() == (1, 6) and torch.isnan(like).all()  # keeps the layout of its model
    assert not torch.isnan(torch.zeros(1)).any() and not dispatch._poison


def test_the_packages_import_no_torch() -> None:
    # frontier.kernels and frontier.optim are plain namespaces: the ops live in (and are imported from)
    # their submodules, so importing a package pulls in neither torch nor Triton.
    code = (
        "import sys, frontier.kernels, frontier.optim; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reading_the_config_does_not_import_torch() -> None:
    code = "import sys, frontier.config; assert 'torch' not in sys.modules and 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compiled_fullgraph_traces_dispatch_and_fake_kernels() -> None:
    # aot_eager traces with the fake implementations and runs the real (interpreted) kernels: the
    # dispatch and the registrations must be traceable with fullgraph=True on any machine.
    from frontier.kernels.rms_norm import rms_norm
    from frontier.kernels.rope import rope
    from frontier.kernels.swiglu import swiglu

    def block(x, w, q, k, cos, sin):  # type: ignore[no-untyped-def]
        q2, k2 = rope(q, k, cos, sin, impl="triton")
        h = rms_norm(x, w, impl="triton")
        return swiglu(h, h, impl="triton").sum() + q2.sum() + k2.sum()

    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=gen) for s in [(3, 16), (16,), (1, 2, 3, 8), (1, 1, 3, 8), (1, 3, 8), (1, 3, 8)]]
    leaves = [a.requires_grad_(i in (0, 1, 2, 3)) for i, a in enumerate(args)]
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(block(*leaves), leaves[:4])
    comp_grads = torch.autograd.grad(compiled(*leaves), leaves[:4])
    for a, b in zip(comp_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- the one rule for "auto" (the module docstring's table) ---

AUTO_FALLBACKS = {
    "rms_norm": "torch",
    "rope": "torch",
    "swiglu": "torch",
    "geglu": "torch",
    "cross_entropy": "torch",
    "fused_linear_cross_entropy": "torch",
    "attention": "sdpa",
}


def test_auto_fallback_table_is_the_documented_one() -> None:
    assert dispatch.AUTO_FALLBACK == AUTO_FALLBACKS
    table = [line.split() for line in dispatch.__doc__.splitlines()]
    for op, fallback in AUTO_FALLBACKS.items():
        rows = [row for row in table if row and row[0] == op]
        assert len(rows) == 1 and f"``{fallback}``" in rows[0], f"{op}: the docstring's table disagrees"


@pytest.mark.parametrize("op", list(AUTO_FALLBACKS))
def test_auto_is_triton_on_cuda_when_the_kernel_handles_the_inputs_else_the_fallback(op: str) -> None:
    extra = ("sdpa",) if op == "attention" else ()
    fallback = AUTO_FALLBACKS[op]
    assert resolve_impl("auto", "cuda", op=op, extra=extra) == "triton"
    assert resolve_impl("auto", "cuda", op=op, extra=extra, unsupported="takes no such input") == fallback
    assert resolve_impl("auto", "cpu", op=op, extra=extra) == fallback
    with pytest.raises(KernelUnavailableError, match=f"{op}: the Triton kernel takes no such input; use impl='auto'"):
        resolve_impl("triton", "cuda", op=op, extra=extra, unsupported="takes no such input")


def test_the_ops_follow_the_rule_on_the_cpu() -> None:
    # auto on a CPU tensor is each op's fallback, bit for bit (also attention: SDPA, not the O(S^2) reference).
    from frontier.kernels.attention import attention, attention_sdpa
    from frontier.kernels.cross_entropy import cross_entropy, cross_entropy_reference
    from frontier.kernels.fused_linear_cross_entropy import (
        fused_linear_cross_entropy,
        fused_linear_cross_entropy_reference,
    )
    from frontier.kernels.geglu import geglu, geglu_reference
    from frontier.kernels.rms_norm import rms_norm, rms_norm_reference
    from frontier.kernels.rope import rope, rope_reference
    from frontier.kernels.swiglu import swiglu, swiglu_reference

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 16, generator=gen), torch.randn(16, generator=gen)
    q, k = torch.randn(1, 2, 6, 16, generator=gen), torch.randn(1, 1, 6, 16, generator=gen)
    cos, sin = torch.randn(1, 6, 16, generator=gen), torch.randn(1, 6, 16, generator=gen)
    targets = torch.tensor([1, 0, 5])
    head = torch.randn(7, 16, generator=gen)
    pairs = [
        (rms_norm(x, w), rms_norm_reference(x, w)),
        (swiglu(x, x), swiglu_reference(x, x)),
        (geglu(x, x), geglu_reference(x, x)),
        (torch.cat(rope(q, k, cos, sin), 1), torch.cat(rope_reference(q, k, cos, sin), 1)),
        (attention(q, k, k), attention_sdpa(q, k, k)),
        (cross_entropy(x, targets), cross_entropy_reference(x, targets)),
        (fused_linear_cross_entropy(x, head, targets), fused_linear_cross_entropy_reference(x, head, targets)),
    ]
    for got, want in pairs:
        assert torch.equal(got, want)


@pytest.mark.parametrize("op", ["rms_norm", "cross_entropy", "fused_linear_cross_entropy", "attention"])
def test_triton_refuses_inputs_its_kernel_does_not_handle(op: str) -> None:
    from frontier.kernels.attention import attention
    from frontier.kernels.cross_entropy import cross_entropy
    from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
    from frontier.kernels.rms_norm import rms_norm

    targets = torch.tensor([0, 1])
    calls = {
        "rms_norm": lambda: rms_norm(torch.zeros(1, MAX_FUSED_COLS + 1), torch.ones(MAX_FUSED_COLS + 1), impl="triton"),
        "cross_entropy": lambda: cross_entropy(torch.zeros(2, 5, dtype=torch.float64), targets, impl="triton"),
        "fused_linear_cross_entropy": lambda: fused_linear_cross_entropy(
            torch.zeros(2, 4, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64), targets, impl="triton"
        ),
        "attention": lambda: attention(*(torch.zeros(1, 1, 4, 24) for _ in range(3)), impl="triton"),
    }
    with pytest.raises(KernelUnavailableError, match=f"^{op}: the Triton kernel "):
        calls[op]()
