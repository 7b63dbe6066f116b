"""build_optimizer: each impl gives the optimizer it names, auto the fastest usable, errors are one line."""

from __future__ import annotations

import pytest
import torch

from frontier.config import load_params
from frontier.config.optimizer import OptimizerConfig
from frontier.errors import ConfigError
from frontier.ext import ExtensionError
from frontier.optim import ops
from frontier.optim.build import build_optimizer, resolve_impl
from frontier.optim.fused_adamw import FusedAdamW


def groups() -> list[dict]:
    a, b = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))
    return [{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}]


def test_frontier_impl_is_fused_adamw_with_the_config() -> None:
    cfg = OptimizerConfig(impl="frontier", lr=2e-3, beta1=0.8, beta2=0.9, eps=1e-7, state_dtype="bf16")
    opt = build_optimizer(groups(), cfg)
    assert isinstance(opt, FusedAdamW)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["state_dtype"]) == (2e-3, (0.8, 0.9), 1e-7, "bf16")
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # group values win


def test_torch_impl_is_fused_torch_adamw() -> None:
    opt = build_optimizer(groups(), OptimizerConfig(impl="torch"))
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["fused"]


def test_auto_is_frontier_when_the_extension_loads() -> None:
    assert resolve_impl(OptimizerConfig(impl="auto")) == "frontier"
    assert isinstance(build_optimizer(groups(), OptimizerConfig()), FusedAdamW)


def test_auto_falls_back_to_torch_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    def unusable(build: bool = True) -> str:
        raise ExtensionError("no compiler")

    monkeypatch.setattr(ops, "load_ops", unusable)
    assert resolve_impl(OptimizerConfig(impl="auto")) == "torch"
    with pytest.raises(ConfigError, match="state_dtype.*no compiler"):
        resolve_impl(OptimizerConfig(impl="auto", state_dtype="bf16"))


def test_bf16_states_with_torch_impl_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("optimizer:\n  impl: torch\n  state_dtype: bf16\n")
    with pytest.raises(ConfigError, match="state_dtype"):
        load_params(path, [])


def test_deepspeed_impl_error_is_one_clear_line() -> None:
    meta = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    with pytest.raises(ConfigError, match="optimizer.impl: deepspeed is not usable here"):
        build_optimizer(meta, OptimizerConfig(impl="deepspeed"))


@pytest.mark.slow  # a cold cache JIT-builds DeepSpeed's cpu_adam op first (minutes on 2 cores)
def test_deepspeed_impl_is_deepspeed_cpu_adam_and_steps_like_adamw() -> None:
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    torch.manual_seed(0)
    ours, ref = torch.nn.Parameter(torch.randn(257)), torch.nn.Parameter(torch.randn(257))
    ref.data.copy_(ours.data)
    opt = build_optimizer([ours], OptimizerConfig(impl="deepspeed", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, DeepSpeedCPUAdam)
    torch_opt = torch.optim.AdamW([ref], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        ours.grad = torch.randn(257)
        ref.grad = ours.grad.clone()
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
