"""FusedAdamW against torch.optim.AdamW: same trajectory, state dicts both ways, and the fused extras."""

from __future__ import annotations

import copy

import pytest
import torch

from frontier.optim.fused_adamw import FusedAdamW

SIZES = [(1,), (3,), (1023,), (4097,), (31, 67), (70001,)]  # odd sizes, one beyond a thread's grain
HYPER = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}


def make_params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SIZES]


def clone_params(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def random_grads(gen: torch.Generator, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [torch.randn(s, generator=gen).to(dtype) for s in SIZES]


def run(opt: torch.optim.Optimizer, params, steps: int, seed: int = 1, **step_kwargs) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p, g in zip(params, random_grads(gen)):
            p.grad = g
        opt.step(**step_kwargs)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest |b| of the tensor (elementwise ratios blow up near 0)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_params_close(ours, ref, tol: float = 1e-6) -> None:
    for a, b in zip(ours, ref):
        assert max_rel_err(a.detach(), b.detach()) <= tol


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_200_steps_match_torch_adamw(weight_decay: float) -> None:
    ours, ref = make_params(), make_params()
    fused = FusedAdamW(ours, weight_decay=weight_decay, **HYPER)
    torch_opt = torch.optim.AdamW(ref, weight_decay=weight_decay, foreach=False, **HYPER)
    run(fused, ours, 200)
    run(torch_opt, ref, 200)
    assert_params_close(ours, ref)
    for a, b in zip(ours, ref):
        mine, theirs = fused.state[a], torch_opt.state[b]
        assert float(mine["step"]) == float(theirs["step"]) == 200.0
        assert max_rel_err(mine["exp_avg"], theirs["exp_avg"]) <= 1e-6
        assert max_rel_err(mine["exp_avg_sq"], theirs["exp_avg_sq"]) <= 1e-6
    # and it moved: the comparison is not between two untouched copies
    assert max_rel_err(ours[2].detach(), make_params()[2]) > 1e-3


def test_param_groups_and_lr_changes_match_torch_adamw() -> None:
    ours, ref = make_params(), make_params()

    def groups(params):
        return [{"params": params[:3], "weight_decay": 0.0, "lr": 3e-3}, {"params": params[3:]}]

    fused = FusedAdamW(groups(ours), weight_decay=0.05, **HYPER)
    torch_opt = torch.optim.AdamW(groups(ref), weight_decay=0.05, foreach=False, **HYPER)
    for opt, params in ((fused, ours), (torch_opt, ref)):
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        gen = torch.Generator().manual_seed(3)
        for _ in range(40):
            for p, g in zip(params, random_grads(gen)):
                p.grad = g
            opt.step()
            sched.step()
    assert_params_close(ours, ref)


def test_state_dict_round_trip_with_torch_adamw() -> None:
    # FusedAdamW -> torch.optim.AdamW
    ours, ref = make_params(), make_params()
    fused = FusedAdamW(ours, weight_decay=0.1, **HYPER)
    run(fused, ours, 30)
    for p, q in zip(ref, ours):
        p.data.copy_(q.data)
    torch_opt = torch.optim.AdamW(ref, weight_decay=0.1, foreach=False, **HYPER)
    torch_opt.load_state_dict(copy.deepcopy(fused.state_dict()))  # as after torch.save / load
    run(fused, ours, 30, seed=2)
    run(torch_opt, ref, 30, seed=2)
    assert_params_close(ours, ref)
    # torch.optim.AdamW -> FusedAdamW (its states and steps continue, not restart)
    fresh = FusedAdamW(clone_params(ref), weight_decay=0.1, **HYPER)
    fresh_params = fresh.param_groups[0]["params"]
    fresh.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    run(fresh, fresh_params, 20, seed=3)
    run(torch_opt, ref, 20, seed=3)
    assert_params_close(fresh_params, ref)
    assert float(fresh.state[fresh_params[0]]["step"]) == 80.0
    assert set(fresh.state_dict()["state"][0]) == set(torch_opt.state_dict()["state"][0])


def test_bf16_states_load_into_torch_adamw() -> None:
    params = make_params()
    fused = FusedAdamW(params, state_dtype="bf16", **HYPER)
    run(fused, params, 5)
    torch_opt = torch.optim.AdamW(clone_params(params), foreach=False, **HYPER)
    torch_opt.load_state_dict(fused.state_dict())
    state = torch_opt.state[torch_opt.param_groups[0]["params"][0]]
    assert state["exp_avg"].dtype == torch.float32  # cast to the param dtype by torch
    assert torch.equal(state["exp_avg"], fused.state[params[0]]["exp_avg"].float())


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), float("-inf")])
def test_nonfinite_grad_skips_the_step_and_reports_it(bad: float) -> None:
    ours, ref = make_params(), make_params()
    fused = FusedAdamW(ours, weight_decay=0.1, **HYPER)
    torch_opt = torch.optim.AdamW(ref, weight_decay=0.1, foreach=False, **HYPER)
    run(fused, ours, 3)
    run(torch_opt, ref, 3)
    before = [p.detach().clone() for p in ours]
    states = [{k: v.clone() for k, v in fused.state[p].items()} for p in ours]
    gen = torch.Generator().manual_seed(9)
    for p, g in zip(ours, random_grads(gen)):
        p.grad = g
    ours[3].grad[17] = bad
    fused.step()
    assert fused.last_step_skipped()
    for p, b, s in zip(ours, before, states):
        assert torch.equal(p.detach(), b)
        assert all(torch.equal(fused.state[p][k], v) for k, v in s.items())
    run(fused, ours, 3, seed=4)  # finite again: steps resume as if the bad one never happened
    run(torch_opt, ref, 3, seed=4)
    assert not fused.last_step_skipped()
    assert_params_close(ours, ref)


def test_nonfinite_grad_in_one_bucket_skips_every_bucket() -> None:
    a = torch.nn.Parameter(torch.randn(100))
    b = torch.nn.Parameter(torch.randn(50, dtype=torch.bfloat16))  # another dtype: another op call
    fused = FusedAdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], **HYPER)
    a.grad = torch.randn(100)
    b.grad = torch.randn(50, dtype=torch.bfloat16)
    b.grad[7] = float("nan")
    a0 = a.detach().clone()
    fused.step()
    assert fused.last_step_skipped()
    assert torch.equal(a.detach(), a0)
    assert float(fused.state[a]["step"]) == 0.0


def test_check_finite_off_lets_nan_through() -> None:
    p = torch.nn.Parameter(torch.randn(10))
    fused = FusedAdamW([p], check_finite=False, **HYPER)
    p.grad = torch.full((10,), float("nan"))
    fused.step()
    assert not fused.last_step_skipped()
    assert torch.isnan(p.detach()).all()


@pytest.mark.parametrize("scale", [0.25, 1.0 / 3.0])
def test_grad_scale_multiplies_grads(scale: float) -> None:
    ours, ref = make_params(), make_params()
    fused = FusedAdamW(ours, weight_decay=0.1, **HYPER)
    torch_opt = torch.optim.AdamW(ref, weight_decay=0.1, foreach=False, **HYPER)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for step in range(20):
        for p, g in zip(ours, random_grads(gen_a)):
            p.grad = g / scale  # e.g. loss-scaled grads
        for p, g in zip(ref, random_grads(gen_b)):
            p.grad = g
        as_tensor = step % 2 == 0  # both forms: a Python float and a 1-element tensor
        fused.step(grad_scale=torch.tensor(scale) if as_tensor else scale)
        torch_opt.step()
    assert_params_close(ours, ref, tol=1e-6 if scale == 0.25 else 1e-5)


def test_grad_scale_overflow_to_inf_is_caught() -> None:
    p = torch.nn.Parameter(torch.randn(8))
    fused = FusedAdamW([p], **HYPER)
    p.grad = torch.full((8,), 1e38)
    fused.step(grad_scale=10.0)
    assert fused.last_step_skipped()


def test_bf16_model_copy_is_written_in_the_same_step() -> None:
    masters = make_params()
    copies = [torch.empty(p.shape, dtype=torch.bfloat16) for p in masters]
    fused = FusedAdamW(masters, weight_decay=0.1, **HYPER)
    fused.set_model_copies(zip(masters, copies))
    assert all(torch.equal(c, m.detach().to(torch.bfloat16)) for m, c in zip(masters, copies))
    ref = make_params()
    torch_opt = torch.optim.AdamW(ref, weight_decay=0.1, foreach=False, **HYPER)
    run(fused, masters, 10)
    run(torch_opt, ref, 10)
    assert_params_close(masters, ref)  # the masters are untouched by the copy
    for m, c in zip(masters, copies):
        assert torch.equal(c, m.detach().to(torch.bfloat16))  # round to nearest even, like .to()


def test_set_model_copies_rejects_wrong_pairs() -> None:
    p = torch.nn.Parameter(torch.randn(4))
    fused = FusedAdamW([p], **HYPER)
    with pytest.raises(ValueError, match="not a parameter"):
        fused.set_model_copies([(torch.randn(4), torch.empty(4, dtype=torch.bfloat16))])
    with pytest.raises(ValueError, match="bf16 copy"):
        fused.set_model_copies([(p, torch.empty(4))])


def test_non_contiguous_param_uses_the_reference_and_matches_torch() -> None:
    def make() -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.randn(6, 9, generator=torch.Generator().manual_seed(0)).t())

    ours, ref = make(), make()
    assert not ours.is_contiguous()
    fused = FusedAdamW([ours], weight_decay=0.1, **HYPER)
    torch_opt = torch.optim.AdamW([ref], weight_decay=0.1, foreach=False, **HYPER)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(10):
        ours.grad = torch.randn(9, 6, generator=gen_a)
        ref.grad = torch.randn(9, 6, generator=gen_b)
        fused.step()
        torch_opt.step()
    assert max_rel_err(ours.detach(), ref.detach()) <= 1e-6


def test_rejects_bad_hyperparameters() -> None:
    p = [torch.nn.Parameter(torch.randn(2))]
    with pytest.raises(ValueError, match="state_dtype"):
        FusedAdamW(p, state_dtype="fp8")
    with pytest.raises(ValueError, match="beta"):
        FusedAdamW(p, betas=(1.0, 0.9))
