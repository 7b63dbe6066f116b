"""bf16 optimizer states with stochastic rounding: bounded and unbiased rounding, slow averages that
round-to-nearest would freeze, a bounded distance to fp32 states, and the same convergence."""

from __future__ import annotations

import math

import torch
from torch import nn

from frontier.optim import ops
from frontier.optim.fused_adamw import FusedAdamW
from frontier.optim.reference import bf16_stochastic_round

ops.load_ops()


def bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and above |x| (toward zero, away from zero), as float32."""
    toward = (x.view(torch.int32) & ~0xFFFF).view(torch.float32)
    away = ((x.view(torch.int32) & ~0xFFFF) + 0x10000).view(torch.float32)
    return toward, away


def test_stochastic_rounding_is_bounded_and_unbiased() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=gen) * torch.exp(8 * torch.randn(2000, generator=gen))  # many magnitudes
    draws = torch.randint(0, 1 << 16, (256, 2000), generator=gen)
    q = torch.stack([bf16_stochastic_round(x, r).float() for r in draws])  # [256, 2000]
    toward, away = bf16_neighbours(x)
    assert bool(((q == toward) | (q == away)).all())  # always a neighbour: error < 1 bf16 ulp
    ulp = (away - toward).abs()
    bias = (q.double().mean(0) - x.double()).abs() / ulp.double()
    # each mean of 256 draws has std <= ulp / 32; round-to-nearest or truncation leave up to 0.5 ulp
    assert float(bias.max()) < 0.2
    assert float(bias.mean()) < 0.05


def _ema_after(steps: int, beta: float, state_dtype: torch.dtype) -> tuple[float, float]:
    """mean exp_avg, exp_avg_sq after `steps` AdamW steps with every grad 1 (both EMAs tend to 1)."""
    n = 4096
    params, grads = [torch.zeros(n)], [torch.ones(n)]
    m, v = [torch.zeros(n, dtype=state_dtype)], [torch.zeros(n, dtype=state_dtype)]
    step, scale, found = [torch.zeros(())], torch.ones(1), torch.zeros(1)
    for _ in range(steps):
        ops.fused_adamw_(
            params,
            grads,
            m,
            v,
            step,
            [],
            scale,
            found,
            lr=1e-3,
            beta1=beta,
            beta2=beta,
            eps=1e-8,
            weight_decay=0.0,
            check_finite=False,
            seed=11,
        )
    return float(m[0].float().mean()), float(v[0].float().mean())


def test_bf16_states_track_slow_averages_that_round_to_nearest_freezes() -> None:
    steps, beta = 1500, 0.999
    exact = 1.0 - beta**steps  # 0.777
    m, v = _ema_after(steps, beta, torch.bfloat16)
    assert abs(m - exact) < 0.01 * exact and abs(v - exact) < 0.01 * exact
    # why stochastic rounding: with round-to-nearest the EMA stops once (1-beta)*(1-m) < ulp(m)/2
    rne = torch.zeros((), dtype=torch.bfloat16)
    for _ in range(steps):
        rne = (rne.float() * beta + (1 - beta)).to(torch.bfloat16)
    assert float(rne) < 0.5 * exact


def _train_params(state_dtype: str, steps: int, lr: float) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in (4097, 20011)]
    opt = FusedAdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.1, state_dtype=state_dtype)
    grads = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads) + 0.3
        opt.step()
    return [p.detach() for p in params]


def test_bf16_states_stay_within_the_stated_bound_of_fp32_states() -> None:
    """Stated bound (FusedAdamW docs): RMS(p_bf16 - p_fp32) <= 0.03 * lr * sqrt(steps).

    Each stored state is within one bf16 ulp (2^-7 relative) and unbiased, so the state errors
    stay ~2^-8 relative under the EMA's damping and the parameter error grows like a random walk
    (sqrt(steps)), not linearly as a biased rounding would make it."""
    steps, lr = 200, 1e-3
    fp32, bf16 = _train_params("fp32", steps, lr), _train_params("bf16", steps, lr)
    start = _train_params("fp32", 0, lr)
    for a, b, s in zip(fp32, bf16, start):
        rms = float((a - b).pow(2).mean().sqrt())
        assert rms <= 0.03 * lr * math.sqrt(steps)
        assert float((a - b).abs().max()) <= 0.15 * lr * math.sqrt(steps)
        assert float((a - s).pow(2).mean().sqrt()) > 20 * lr  # the params did move


def test_bf16_states_converge_like_fp32() -> None:
    def final_loss(state_dtype: str) -> tuple[float, float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        opt = FusedAdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01, state_dtype=state_dtype)
        data = torch.Generator().manual_seed(1)
        x = torch.randn(256, 8, generator=data)
        y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
        losses = []
        for _ in range(300):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses[0], losses[-1]

    start, fp32 = final_loss("fp32")
    _, bf16 = final_loss("bf16")
    assert fp32 < 0.1 * start
    assert abs(bf16 - fp32) <= 0.1 * fp32
