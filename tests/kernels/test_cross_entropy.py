"""cross_entropy: Triton kernel (interpreter on CPU) against the float64 reference, the consumed-logits
contract, ignore_index / smoothing / z-loss, schema checks, torch.compile."""

from __future__ import annotations

import zlib

import pytest
import torch

from frontier.kernels.cross_entropy import cross_entropy, cross_entropy_reference, launch_cross_entropy
from frontier.kernels.dispatch import KernelUnavailableError
from tests.kernels.reference_check import check_against_reference, leaves
from tests.kernels.tolerance import assert_close_to_reference, poison_

IGNORE = -100


def _inputs(n: int, v: int, dtype: torch.dtype, *, ignore_every: int = 0, seed: str = "") -> tuple:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{n}{v}{dtype}{seed}".encode()))
    logits = (3 * torch.randn(n, v, generator=gen)).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    if ignore_every:
        targets[1::ignore_every] = IGNORE
    return logits, targets


class _UnitGrad(torch.autograd.Function):
    """Identity whose backward hands on a gradient of exactly 1 (the usual ``loss.backward()``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.ones_like(grad)


def _ops(targets: torch.Tensor, consume: bool, unit_grad: bool = False, **kw):  # type: ignore[no-untyped-def]
    """(kernel, reference) as functions of the logits. consume: feed the kernel a non-leaf (x * 1), which
    takes the path that writes the gradient over the logits; otherwise the functional pair."""
    wrap = _UnitGrad.apply if unit_grad else (lambda y: y)

    def kernel(x: torch.Tensor) -> torch.Tensor:
        return wrap(cross_entropy(x * 1 if consume else x, targets.to(x.device), impl="triton", **kw))

    def reference(x: torch.Tensor) -> torch.Tensor:
        return wrap(cross_entropy_reference(x, targets.to(x.device), **kw))

    return kernel, reference


CASES = [  # (N, V, dtype, reduction, label_smoothing, z_loss): V not a multiple of the 256-wide block
    (1, 257, torch.float32, "mean", 0.0, 0.0),
    (5, 1000, torch.float32, "sum", 0.1, 1e-3),
    (6, 257, torch.float16, "none", 0.1, 1e-3),
    (6, 300, torch.bfloat16, "mean", 0.0, 1e-3),
    (4, 64, torch.bfloat16, "sum", 0.2, 0.0),
    (4, 513, torch.float16, "mean", 0.0, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_functional_path_matches_reference(case: tuple) -> None:
    # A leaf `logits` is never overwritten: loss by the forward kernel, gradient (for a random
    # grad_output) by the backward kernel into a fresh buffer.
    n, v, dtype, reduction, smoothing, z = case
    logits, targets = _inputs(n, v, dtype, ignore_every=3)
    kernel, reference = _ops(targets, False, reduction=reduction, label_smoothing=smoothing, z_loss=z)
    check_against_reference(kernel, reference, leaves(logits))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_consuming_path_matches_reference(case: tuple) -> None:
    # A non-leaf `logits` receives the gradient in the forward. Half precisions: grad_output 1 (the
    # gradient is rounded once in the forward; another grad_output would round it a second time, as
    # documented); fp32: a random grad_output, which the backward applies in place.
    n, v, dtype, reduction, smoothing, z = case
    logits, targets = _inputs(n, v, dtype, ignore_every=3, seed="consume")
    kernel, reference = _ops(
        targets, True, unit_grad=dtype != torch.float32, reduction=reduction, label_smoothing=smoothing, z_loss=z
    )
    check_against_reference(kernel, reference, leaves(logits))


def test_online_softmax_is_stable_when_the_max_comes_late() -> None:
    # Huge logits whose maximum sits in the last (partial) block: the running max must rescale the sum.
    logits, targets = _inputs(3, 600, torch.float32)
    logits[:, -1] += 1e4
    logits[1, :10] -= 1e4
    kernel, reference = _ops(targets, True, reduction="sum", label_smoothing=0.1, z_loss=1e-4)
    check_against_reference(kernel, reference, leaves(logits))


def _loss_by_formula(logits, targets, smoothing=0.0, z_loss=0.0):
    """Per-row loss written out: lse - (1 - s) x[t] - s mean(x) + z lse^2, 0 on ignored rows."""
    lse = torch.logsumexp(logits, -1)
    valid = targets != IGNORE
    picked = logits.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
    rows = lse - (1 - smoothing) * picked - smoothing * logits.mean(-1) + z_loss * lse * lse
    return torch.where(valid, rows, torch.zeros_like(rows)), valid


def test_reference_equals_the_loss_written_out() -> None:
    logits, targets = _inputs(6, 50, torch.float64, ignore_every=3)
    for smoothing, z_loss in ((0.0, 0.0), (0.3, 0.0), (0.0, 0.01), (0.3, 0.01)):
        rows, valid = _loss_by_formula(logits, targets, smoothing, z_loss)
        expected = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / valid.sum()}
        for reduction, want in expected.items():
            ours = cross_entropy_reference(
                logits, targets, label_smoothing=smoothing, z_loss=z_loss, reduction=reduction
            )
            torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    every_row_ignored = torch.full_like(targets, IGNORE)
    assert cross_entropy_reference(logits, every_row_ignored).item() == 0.0  # not NaN (PyTorch's mean)


def test_reference_gradient_equals_the_formulas() -> None:
    logits, targets = _inputs(5, 40, torch.float64, ignore_every=2)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    cross_entropy_reference(a, targets, label_smoothing=0.2, z_loss=1e-3).backward()
    rows, valid = _loss_by_formula(b, targets, 0.2, 1e-3)
    (rows.sum() / valid.sum()).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_launcher_writes_every_output_element() -> None:
    # All outputs start as NaN; the kernel must write loss, lse and the whole gradient, zeros on ignored rows.
    logits, targets = _inputs(5, 300, torch.float32, ignore_every=2)  # rows 1 and 3 ignored
    loss, lse, grad = poison_(torch.empty(5)), poison_(torch.empty(5)), poison_(torch.empty(5, 300))
    scale = torch.tensor(0.5)
    launch_cross_entropy(logits, targets, loss_out=loss, lse=lse, grad_out=grad, grad_scale=scale, z_loss=1e-3)
    x = logits.double().requires_grad_()
    ref_rows = cross_entropy_reference(x, targets, z_loss=1e-3, reduction="none")
    (ref_grad,) = torch.autograd.grad(ref_rows.sum() * 0.5, x)
    ref_lse = torch.where(targets != IGNORE, torch.logsumexp(x.detach(), -1), 0.0)
    for name, out, ref in (("loss", loss, ref_rows), ("lse", lse, ref_lse), ("grad", grad, ref_grad)):
        assert_close_to_reference(out, ref.detach(), ref.detach().float(), name=name)
    assert torch.all(grad[1] == 0) and torch.all(grad[3] == 0) and torch.all(loss[1::2] == 0)

    # Backward-only mode: lse given, per-row scale as an expanded (stride 0) tensor, gradient into a new buffer.
    grad2 = poison_(torch.empty(5, 300))
    launch_cross_entropy(logits, targets, lse=lse, grad_out=grad2, grad_scale=torch.tensor(0.5).expand(5), z_loss=1e-3)
    assert_close_to_reference(grad2, ref_grad, ref_grad.float(), name="grad from lse")


@pytest.mark.parametrize("consume", [True, False], ids=["consume", "functional"])
def test_all_rows_ignored_gives_zero_loss_and_zero_grad(consume: bool) -> None:
    logits, _ = _inputs(3, 40, torch.float32)
    targets = torch.full((3,), IGNORE)
    for reduction in ("mean", "sum", "none"):
        x = logits.clone().requires_grad_()
        loss = cross_entropy(x * 1 if consume else x, targets, reduction=reduction, label_smoothing=0.1, impl="triton")
        loss.sum().backward()
        assert torch.equal(loss, torch.zeros_like(loss)), reduction
        assert torch.equal(x.grad, torch.zeros_like(x)), reduction


def test_target_out_of_range_gives_nan_for_that_row_only() -> None:
    logits, targets = _inputs(3, 40, torch.float32)
    targets[1] = 40
    loss = cross_entropy(logits, targets, reduction="none", impl="triton")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()


def test_non_leaf_logits_are_consumed_leaf_and_eval_logits_are_not() -> None:
    logits, targets = _inputs(4, 100, torch.float32, ignore_every=2)
    x = logits.clone().requires_grad_()
    y = x * 1  # the lm_head output in a model
    loss = cross_entropy(y, targets, impl="triton")
    loss.backward()
    assert torch.equal(y.detach(), x.grad)  # y's storage now holds d(loss)/d(logits), 1/n_valid included
    assert torch.equal(x.detach(), logits)  # the leaf was not touched

    leaf = logits.clone().requires_grad_()
    cross_entropy(leaf, targets, impl="triton").backward()
    assert torch.equal(leaf.detach(), logits) and leaf.grad is not None
    with torch.no_grad():
        y = logits.clone()
        cross_entropy(y, targets, impl="triton")
    assert torch.equal(y, logits)


def test_consuming_logits_another_node_saved_raises_instead_of_corrupting() -> None:
    # tanh saves its output for the backward; overwriting it in place must be caught by autograd.
    logits, targets = _inputs(2, 30, torch.float32)
    x = logits.clone().requires_grad_()
    y = torch.tanh(x)
    loss = cross_entropy(y, targets, impl="triton")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_opcheck() -> None:
    logits, targets = _inputs(4, 40, torch.float32, ignore_every=2)
    lse, rows = torch.logsumexp(logits, -1), torch.rand(4) + 0.5
    frontier = torch.ops.frontier
    cases = [
        (frontier.cross_entropy_fwd.default, (logits.clone().requires_grad_(), targets, IGNORE, 0.1, 1e-3)),
        (frontier.cross_entropy_bwd.default, (logits, targets, lse, rows, IGNORE, 0.1, 1e-3)),
        (frontier.cross_entropy_fwd_bwd_.default, (logits.clone(), targets, torch.tensor(0.5), IGNORE, 0.1, 1e-3)),
        (frontier.scale_rows_.default, (logits.clone(), rows)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compiled_fullgraph_consumes_in_place_and_matches_eager() -> None:
    # aot_eager runs Dynamo and AOTAutograd (functionalisation of the in-place op) without a C++ compiler.
    logits, targets = _inputs(4, 100, torch.float32, ignore_every=3)
    w = torch.randn(100, 100)

    def step(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return cross_entropy(x @ w, targets, label_smoothing=0.1, z_loss=1e-3, impl="triton")

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        x, ww = logits.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(x, ww)
        grads.append((loss.detach(), *torch.autograd.grad(loss, (x, ww))))
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager)


def test_impl_torch_is_the_reference_and_bad_arguments_are_named() -> None:
    logits, targets = _inputs(3, 20, torch.float32)
    assert torch.equal(cross_entropy(logits, targets, impl="torch"), cross_entropy_reference(logits, targets))
    with pytest.raises(ValueError, match="reduction='avg'"):
        cross_entropy(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="targets have shape"):
        cross_entropy(logits, targets[:2])
    with pytest.raises(ValueError, match="label_smoothing=1.5"):
        cross_entropy(logits, targets, label_smoothing=1.5)
    with pytest.raises(
        KernelUnavailableError, match="cross_entropy: the Triton kernel takes fp32/fp16/bf16 logits, got torch.float64"
    ):
        cross_entropy(logits.double(), targets, impl="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_blocks_and_compiled_fullgraph_match_reference(dtype: torch.dtype) -> None:
    # GPU-sized blocks (32768 wide) over a vocabulary that is not a multiple of them, eager and Inductor.
    logits, targets = _inputs(64, 50257, dtype, ignore_every=5)
    logits, targets = logits.cuda(), targets.cuda()
    kernel, reference = _ops(targets, True, unit_grad=True, label_smoothing=0.1, z_loss=1e-4)
    check_against_reference(kernel, reference, leaves(logits))
    compiled = torch.compile(kernel, fullgraph=True)
    outs = []
    for fn in (kernel, compiled):
        x = logits.clone().requires_grad_()
        loss = fn(x)
        outs.append((loss.detach(), *torch.autograd.grad(loss, x)))
    for eager, comp in zip(*outs):
        torch.testing.assert_close(comp, eager)
