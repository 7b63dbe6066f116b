"""fused_linear_cross_entropy: chunked loss and gradients against the float64 eager reference (with and without
Gemma 2's logit softcap), the no-(N, V)-tensor memory property, frozen weights, schema checks, torch.compile."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from frontier.kernels.fused_linear_cross_entropy import (
    _chunked,
    fused_linear_cross_entropy,
    fused_linear_cross_entropy_reference,
)
from tests.kernels.reference_check import check_against_reference, leaves
from tests.kernels.test_cross_entropy import IGNORE, _UnitGrad


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, *, bias: bool, seed: str = "") -> tuple:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{n}{h}{v}{dtype}{bias}{seed}".encode()))
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.25).to(dtype)  # logits of a few units
    tensors = [hidden, weight] + ([torch.randn(v, generator=gen).to(dtype)] if bias else [])
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[2::5] = IGNORE
    return tensors, targets


def _ops(targets: torch.Tensor, unit_grad: bool, chunk_size: int | None, impl: str = "triton", **kw):  # type: ignore[no-untyped-def]
    wrap = _UnitGrad.apply if unit_grad else (lambda y: y)

    def kernel(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        t = targets.to(hidden.device)
        return wrap(fused_linear_cross_entropy(hidden, weight, t, bias=bias, chunk_size=chunk_size, impl=impl, **kw))

    def reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return wrap(fused_linear_cross_entropy_reference(hidden, weight, targets.to(hidden.device), bias=bias, **kw))

    return kernel, reference


CASES = [  # (N, H, V, chunk, dtype, reduction, bias, label_smoothing, z_loss): chunks that do not divide N
    (37, 16, 300, 16, torch.float32, "mean", True, 0.1, 1e-3),
    (37, 16, 300, 16, torch.bfloat16, "sum", False, 0.0, 1e-3),
    (30, 16, 257, 7, torch.float16, "mean", True, 0.1, 0.0),
    (20, 8, 100, 6, torch.bfloat16, "none", True, 0.1, 1e-3),
    (1, 8, 257, 4, torch.float32, "sum", False, 0.0, 0.0),
    (12, 8, 100, None, torch.float32, "none", False, 0.0, 1e-3),  # default chunk: one chunk of all rows
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case: tuple) -> None:
    # "mean"/"sum" compute the gradients in the forward and scale them by grad_output in the backward:
    # random grad_output in fp32; grad_output 1 in half precision (a second rounding otherwise, documented).
    # "none" recomputes in the backward with the per-row grad_output inside the kernel: random everywhere.
    n, h, v, chunk, dtype, reduction, bias, smoothing, z = case
    tensors, targets = _inputs(n, h, v, dtype, bias=bias)
    unit_grad = dtype != torch.float32 and reduction != "none"
    kernel, reference = _ops(targets, unit_grad, chunk, reduction=reduction, label_smoothing=smoothing, z_loss=z)
    check_against_reference(kernel, reference, leaves(*tensors))


SOFTCAP = 2.0  # logits of a few units then span tanh's linear, curved and saturated parts (Gemma 2 uses 30)

SOFTCAP_CASES = [  # (N, H, V, chunk, dtype, reduction, bias): every reduction, with and without bias, ragged chunks
    (37, 16, 300, 16, torch.float32, "mean", True),
    (37, 16, 300, 16, torch.float32, "sum", False),
    (20, 8, 100, 6, torch.float32, "none", True),
    (30, 16, 257, 7, torch.bfloat16, "mean", True),
    (20, 8, 100, 6, torch.float16, "sum", True),
    (20, 8, 100, 6, torch.bfloat16, "none", False),
]


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("case", SOFTCAP_CASES, ids=str)
def test_softcap_matches_reference(case: tuple, impl: str) -> None:
    # the loss of c * tanh(logits / c): loss and the gradients of hidden, weight and bias (same grad_output
    # convention as test_matches_reference)
    n, h, v, chunk, dtype, reduction, bias = case
    tensors, targets = _inputs(n, h, v, dtype, bias=bias, seed="softcap")
    unit_grad = dtype != torch.float32 and reduction != "none"
    kernel, reference = _ops(
        targets, unit_grad, chunk, impl=impl, reduction=reduction, label_smoothing=0.1, z_loss=1e-3, softcap=SOFTCAP
    )
    check_against_reference(kernel, reference, leaves(*tensors))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softcap_with_bias_is_the_loss_of_capped_logits(reduction: str) -> None:
    # the truth written out independently of the reference: F.cross_entropy(c * tanh(linear(h, W, b) / c), t)
    (hidden, weight, bias), targets = _inputs(23, 8, 150, torch.float32, bias=True, seed="formula")

    def formula(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = SOFTCAP * torch.tanh(F.linear(h, w, b) / SOFTCAP)
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction=reduction)

    def kernel(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fused_linear_cross_entropy(
            h, w, targets, bias=b, softcap=SOFTCAP, reduction=reduction, chunk_size=5, impl="triton"
        )

    check_against_reference(kernel, formula, leaves(hidden, weight, bias))
    # the cap changes the loss (else this test would not see a missing cap)
    uncapped = fused_linear_cross_entropy(hidden, weight, targets, bias=bias, reduction="sum", impl="triton")
    capped = fused_linear_cross_entropy(hidden, weight, targets, bias=bias, softcap=SOFTCAP, reduction="sum")
    assert (capped - uncapped).abs() > 1.0


def test_softcap_extreme_logits_stay_finite() -> None:
    # logits of +-1e4 (and 0): tanh saturates, the chain factor underflows to 0 instead of going NaN
    hidden = torch.tensor([[1e4], [-1e4], [0.0]])
    weight = torch.tensor([[1.0], [-1.0], [0.5]])
    targets = torch.tensor([0, 1, 2])
    kernel, reference = _ops(targets, False, 2, reduction="sum", softcap=SOFTCAP)
    check_against_reference(kernel, reference, leaves(hidden, weight))


def test_frozen_weight_and_eval_compute_only_what_is_needed() -> None:
    (hidden, weight), targets = _inputs(10, 8, 60, torch.float32, bias=False)
    ref = fused_linear_cross_entropy_reference(hidden, weight, targets)
    h = hidden.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, targets, chunk_size=4, impl="triton")
    loss.backward()
    h64 = hidden.double().requires_grad_()
    fused_linear_cross_entropy_reference(h64, weight.double(), targets).backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(h.grad, h64.grad.float())
    assert weight.grad is None
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, targets, impl="triton"), ref)


def test_all_rows_ignored_gives_zero_loss_and_zero_grads() -> None:
    (hidden, weight, bias), _ = _inputs(5, 8, 40, torch.float32, bias=True)
    targets = torch.full((5,), IGNORE)
    for reduction in ("mean", "sum", "none"):
        h, w, b = leaves(hidden.clone(), weight.clone(), bias.clone())
        loss = fused_linear_cross_entropy(h, w, targets, bias=b, reduction=reduction, chunk_size=2, impl="triton")
        loss.sum().backward()
        assert torch.equal(loss, torch.zeros_like(loss)), reduction
        for g in (h.grad, w.grad, b.grad):
            assert torch.equal(g, torch.zeros_like(g)), reduction


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any ATen op returns, views and Triton's storage views included."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("softcap", [None, SOFTCAP], ids=["plain", "softcap"])
@pytest.mark.parametrize("per_row_scale", [False, True], ids=["forward", "recompute"])
def test_no_tensor_of_n_by_v_is_ever_allocated(per_row_scale: bool, softcap: float | None) -> None:
    # The loop behind both ops (forward with gradients, and the backward recompute of "none"), watched
    # op by op: nothing may be larger than the (chunk, V) buffer or the (V, H) weight gradient, both well
    # below the (N, V) logits. The same watcher sees the eager reference build them (it can fail).
    n, h, v, chunk = 48, 8, 300, 16
    (hidden, weight, bias), targets = _inputs(n, h, v, torch.float32, bias=True)
    scale = torch.rand(n) if per_row_scale else torch.tensor(0.5)
    watch = _LargestTensor()
    with watch:
        _chunked(
            hidden, weight, targets, bias, scale, (True, True, True),
            ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-3, chunk_size=chunk, softcap=softcap,
        )  # fmt: skip
    allowed = 4 * max(chunk * v, v * h, n * h)
    assert watch.largest <= allowed < 4 * n * v
    eager = _LargestTensor()
    with eager:
        fused_linear_cross_entropy_reference(hidden, weight, targets, bias=bias)
    assert eager.largest >= 4 * n * v


@pytest.mark.parametrize("softcap", [None, SOFTCAP], ids=["plain", "softcap"])
def test_opcheck(softcap: float | None) -> None:
    (hidden, weight, bias), targets = _inputs(6, 8, 40, torch.float32, bias=True)
    h, w, b = leaves(hidden, weight, bias)
    frontier = torch.ops.frontier
    opts = (IGNORE, 0.1, 1e-3, softcap)
    torch.library.opcheck(
        frontier.fused_linear_cross_entropy.default, (h, w, targets, b, *opts, "mean", 4, True, True, True)
    )
    torch.library.opcheck(
        frontier.fused_linear_cross_entropy_bwd.default,
        (hidden, weight, targets, None, torch.rand(6), *opts, 4, True, True, False),
    )


@pytest.mark.parametrize(("reduction", "softcap"), [("sum", None), ("none", SOFTCAP)])
def test_compiled_fullgraph_matches_eager(reduction: str, softcap: float | None) -> None:
    (hidden, weight, bias), targets = _inputs(20, 8, 100, torch.float32, bias=True)

    def step(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        loss = fused_linear_cross_entropy(
            h * 2, w, targets, bias=b, softcap=softcap, reduction=reduction, chunk_size=8, impl="triton"
        )
        return loss.sum()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        inputs = leaves(hidden.clone(), weight.clone(), bias.clone())
        loss = fn(*inputs)
        results.append((loss.detach(), *torch.autograd.grad(loss, inputs)))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager)


def test_bad_arguments_are_named() -> None:
    (hidden, weight), targets = _inputs(4, 8, 20, torch.float32, bias=False)
    with pytest.raises(ValueError, match="expected hidden"):
        fused_linear_cross_entropy(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="chunk_size=0"):
        fused_linear_cross_entropy(hidden, weight, targets, chunk_size=0, impl="triton")
    with pytest.raises(ValueError, match="one dtype"):
        fused_linear_cross_entropy(hidden, weight.half(), targets, impl="triton")
    with pytest.raises(ValueError, match="reduction='avg'"):
        fused_linear_cross_entropy(hidden, weight, targets, reduction="avg")
    for softcap in (0.0, -30.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"softcap={softcap} must be a positive finite number"):
            fused_linear_cross_entropy(hidden, weight, targets, softcap=softcap)


@pytest.mark.gpu
def test_gpu_peak_memory_stays_far_below_eager_and_compiles() -> None:
    n, h, v = 4096, 1024, 32000
    (hidden, weight), targets = _inputs(n, h, v, torch.float32, bias=False)
    hidden, weight, targets = hidden.cuda().bfloat16(), weight.cuda().bfloat16(), targets.cuda()

    def peak_extra(fn) -> int:  # type: ignore[no-untyped-def]
        h, w = leaves(hidden.clone(), weight.clone())
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(h, w, targets).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    logits_bytes = n * v * 2
    fused = peak_extra(lambda h, w, t: fused_linear_cross_entropy(h, w, t, chunk_size=512))
    eager = peak_extra(fused_linear_cross_entropy_reference)
    # extra memory: dweight + dhidden (which any method needs) + one (512, V) chunk; eager holds several (N, V)
    assert fused < logits_bytes < eager, (fused, logits_bytes, eager)

    step = lambda h, w: fused_linear_cross_entropy(h, w, targets, chunk_size=512)  # noqa: E731
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        inputs = leaves(hidden.clone(), weight.clone())
        loss = fn(*inputs)
        results.append((loss.detach(), *torch.autograd.grad(loss, inputs)))
    for eager_t, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager_t)
