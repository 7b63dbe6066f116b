"""FusedAdamW as DeepSpeed's client optimizer (CPU accelerator, one process, ZeRO stages 0 and 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frontier.optim.fused_adamw import FusedAdamW

deepspeed = pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist_info():
    from frontier.train.launch.distributed import init_distributed

    return init_distributed()


def _train(make_optimizer, stage: int, steps: int = 5) -> tuple[list[float], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 33), nn.GELU(), nn.Linear(33, 1))
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # DeepSpeed's ZeRO lists only its own optimizers as tested
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(model.parameters()), config=config)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 16, generator=data)
        y = x[:, :1] * 2.0 - x[:, 1:2]
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("stage", [0, 2])
def test_fused_adamw_as_client_optimizer_matches_torch_adamw(dist_info, stage: int) -> None:
    hyper = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    ours, our_params = _train(lambda params: FusedAdamW(params, **hyper), stage)
    ref, ref_params = _train(lambda params: torch.optim.AdamW(params, foreach=False, **hyper), stage)
    assert ours[-1] < ours[0]  # it trains
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(ref), rtol=1e-6, atol=0)
    for a, b in zip(our_params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
