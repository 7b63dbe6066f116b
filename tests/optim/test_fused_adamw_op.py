"""The frontier::fused_adamw_ / nonfinite_check_ ops: schema checks, bit-exactness against the
PyTorch reference for every dtype combination, ISA and thread independence, argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from frontier.optim import ops
from frontier.optim.reference import fused_adamw_reference_, nonfinite_check_reference_

ops.load_ops()
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
SIZES = [(1,), (3,), (17,), (5, 203), (4097,), (70001,)]
HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}


def make_args(param_dtype=F32, grad_dtype=F32, state_dtype=F32, copy=False, sizes=SIZES, seed=0, step=4.0):
    """Positional op arguments: (params, grads, exp_avgs, exp_avg_sqs, steps, copies, grad_scale, found_inf)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(param_dtype) for s in sizes]
    grads = [torch.randn(s, generator=gen).to(grad_dtype) for s in sizes]
    exp_avgs = [(0.1 * torch.randn(s, generator=gen)).to(state_dtype) for s in sizes]
    exp_avg_sqs = [(0.01 * torch.rand(s, generator=gen)).to(state_dtype) for s in sizes]
    steps = [torch.tensor(step) for _ in sizes]
    copies = [torch.zeros(s, dtype=BF16) for s in sizes] if copy else []
    return params, grads, exp_avgs, exp_avg_sqs, steps, copies, torch.tensor([0.5]), torch.zeros(1)


def clone(args):
    return tuple([t.clone() for t in a] if isinstance(a, list) else a.clone() for a in args)


def assert_same(a, b) -> None:
    for x, y in zip(a, b):
        for s, t in zip(x, y) if isinstance(x, list) else [(x, y)]:
            assert torch.equal(s, t)


COMBOS = [
    (p, g, s, c)
    for p, g, s, c in itertools.product([F32, BF16], [F32, BF16, F16], [F32, BF16], [False, True])
    if not (c and p == BF16)  # model copies are bf16 copies of fp32 masters
]


@pytest.mark.parametrize("param_dtype,grad_dtype,state_dtype,copy", COMBOS)
def test_kernel_is_bit_identical_to_reference(param_dtype, grad_dtype, state_dtype, copy) -> None:
    ours = make_args(param_dtype, grad_dtype, state_dtype, copy)
    ref = clone(ours)
    for _ in range(3):  # later steps start from rounded (bf16) states and new steps
        ops.fused_adamw_(*ours, **HYPER, check_finite=True, seed=7)
        fused_adamw_reference_(*ref, **HYPER, check_finite=True, seed=7)
    assert_same(ours, ref)
    assert float(ours[4][0]) == 7.0  # steps advanced
    if copy:
        assert all(torch.equal(c, p.to(BF16)) for p, c in zip(ours[0], ours[5]))


def test_stochastic_rounding_depends_on_the_seed() -> None:
    a = make_args(state_dtype=BF16)
    b = clone(a)
    ops.fused_adamw_(*a, **HYPER, check_finite=False, seed=1)
    ops.fused_adamw_(*b, **HYPER, check_finite=False, seed=2)
    assert torch.equal(a[0][-1], b[0][-1])  # params do not depend on the rounding of this step
    assert not torch.equal(a[2][-1], b[2][-1])


def test_baseline_and_avx2_loops_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    for combo in [(F32, F32, F32, True), (F32, F16, BF16, False), (BF16, BF16, BF16, False)]:
        native = make_args(*combo)
        baseline = clone(native)
        ops.fused_adamw_(*native, **HYPER, check_finite=True, seed=3)
        with monkeypatch.context() as patch:
            patch.setenv("ATEN_CPU_CAPABILITY", "default")  # forces the build's baseline ISA
            ops.fused_adamw_(*baseline, **HYPER, check_finite=True, seed=3)
        assert_same(native, baseline)


def test_threaded_split_is_bit_identical() -> None:
    sizes = [(3,), (100_003,), (7,), (65_536,)]  # pieces cross tensor boundaries mid-thread
    single = make_args(F32, BF16, BF16, True, sizes=sizes)
    threaded = clone(single)
    ops.fused_adamw_(*single, **HYPER, check_finite=True, seed=5)
    torch.set_num_threads(2)  # the autouse fixture restores one thread afterwards
    ops.fused_adamw_(*threaded, **HYPER, check_finite=True, seed=5)
    assert_same(single, threaded)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_check(dtype, bad) -> None:
    tensors = [torch.randn(5).to(dtype), torch.randn(40_000).to(dtype)]
    found = torch.zeros(1)
    ops.nonfinite_check_(tensors, torch.ones(1), found)
    assert float(found) == 0.0
    tensors[1][39_999] = bad
    ops.nonfinite_check_(tensors, torch.ones(1), found)
    assert float(found) == 1.0
    ref = torch.zeros(1)
    nonfinite_check_reference_(tensors, torch.ones(1), ref)
    assert float(ref) == 1.0


def test_nonfinite_check_sees_overflow_from_the_scale() -> None:
    found = torch.zeros(1)
    ops.nonfinite_check_([torch.full((9,), 60000.0, dtype=F16)], torch.tensor([1e35]), found)
    assert float(found) == 1.0


def test_found_inf_set_on_entry_skips_without_checking() -> None:
    args = make_args()
    before = clone(args)
    args[7].fill_(1.0)
    ops.fused_adamw_(*args, **HYPER, check_finite=False, seed=0)
    assert_same(args[:7], before[:7])


def test_inf_grad_skips_everything_and_sets_found_inf() -> None:
    args = make_args(F32, BF16, BF16, True)
    args[1][4][100] = float("inf")
    before = clone(args)
    ops.fused_adamw_(*args, **HYPER, check_finite=True, seed=0)
    assert float(args[7]) == 1.0
    assert_same(args[:7], before[:7])


def test_empty_lists_are_a_no_op() -> None:
    found = torch.zeros(1)
    ops.fused_adamw_([], [], [], [], [], [], torch.ones(1), found, **HYPER, check_finite=True, seed=0)
    assert float(found) == 0.0


def _with(args, index, value):
    out = list(args)
    out[index] = value
    return tuple(out)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda a: _with(a, 1, a[1][:-1]), "same length"),
        (lambda a: _with(a, 0, [p.to(F16) for p in a[0]]), "params must be float32 or bfloat16"),
        (lambda a: _with(a, 1, [a[1][0].to(BF16)] + a[1][1:]), "one dtype per list"),
        (lambda a: _with(a, 2, [a[2][0]] + [a[2][1]] + [torch.zeros(18)] + a[2][3:]), "shape"),
        (lambda a: _with(a, 3, [v.to(BF16) for v in a[3]]), "dtype of exp_avgs"),
        (lambda a: _with(a, 1, a[1][:3] + [torch.randn(203, 5).t()] + a[1][4:]), "contiguous"),
        (lambda a: _with(a, 5, [torch.zeros(s, dtype=F16) for s in SIZES]), "model_copies"),
        (lambda a: _with(a, 6, torch.ones(2)), "grad_scale"),
        (lambda a: _with(a, 7, torch.zeros(1, dtype=torch.float64)), "found_inf"),
    ],
)
def test_bad_arguments_are_named(mutate, message) -> None:
    args = mutate(make_args())
    with pytest.raises(RuntimeError, match=message):
        ops.fused_adamw_(*args, **HYPER, check_finite=True, seed=0)


def test_bad_hyperparameters_are_named() -> None:
    with pytest.raises(RuntimeError, match="beta2"):
        ops.fused_adamw_(*make_args(), **{**HYPER, "beta2": 1.0}, check_finite=True, seed=0)


@pytest.mark.parametrize("combo", [(F32, F32, F32, False), (F32, BF16, BF16, True), (BF16, F16, F32, False)])
def test_opcheck_fused_adamw(combo) -> None:
    args = make_args(*combo, sizes=[(3,), (2, 5)])
    torch.library.opcheck(torch.ops.frontier.fused_adamw_.default, args, {**HYPER, "check_finite": True, "seed": 1})


def test_opcheck_nonfinite_check() -> None:
    args = ([torch.randn(4), torch.randn(2, 3)], torch.ones(1), torch.zeros(1))
    torch.library.opcheck(torch.ops.frontier.nonfinite_check_.default, args)


def test_torch_compile_traces_the_op() -> None:
    def step(params, grads, exp_avgs, exp_avg_sqs, steps, scale, found):
        ops.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, [], scale, found, **HYPER, seed=0)

    eager = make_args(sizes=[(5,), (8,)])
    compiled = clone(eager)
    step(*eager[:5], *eager[6:])
    torch.compile(step, backend="aot_eager", fullgraph=True)(*compiled[:5], *compiled[6:])
    assert_same(eager, compiled)


def test_every_fp16_grad_converts_exactly() -> None:
    """With beta1 = 0 and fp32 states, exp_avg becomes the grad: compare all 65536 half values."""
    grads = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(F16)
    exp_avg = torch.zeros(grads.numel())
    args = (
        [torch.zeros(grads.numel())],
        [grads],
        [exp_avg],
        [torch.zeros(grads.numel())],
        [torch.zeros(())],
        [],
        torch.ones(1),
        torch.zeros(1),
    )
    ops.fused_adamw_(*args, **{**HYPER, "beta1": 0.0}, check_finite=False, seed=0)
    expected = grads.float()
    finite = torch.isfinite(expected)
    assert torch.equal(exp_avg[finite], expected[finite])
    assert torch.equal(torch.isnan(exp_avg), torch.isnan(expected))
    assert torch.equal(exp_avg[torch.isinf(expected)], expected[torch.isinf(expected)])
