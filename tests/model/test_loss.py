"""The training module returns the SUM of non-padding token losses, through frontier's loss kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frontier.config.kernels import KernelsConfig
from frontier.config.model import ModelConfig
from frontier.model.build import build_model
from frontier.model.loss import IGNORE_INDEX, CausalLMWithLoss


def _tiny(arch: str, fused: bool) -> tuple[torch.nn.Module, CausalLMWithLoss]:
    """A 1-layer model of `arch` (vocab 40, context 12) and its loss module, seeded."""
    torch.manual_seed(0)
    lm = build_model(ModelConfig(arch=arch, hidden_size=32, num_layers=1, num_heads=4, max_seq_len=12), 40)
    return lm, CausalLMWithLoss(lm, KernelsConfig(fused_linear_cross_entropy=fused, cross_entropy="torch"))


@pytest.mark.parametrize("fused", [False, True], ids=["lm_head+cross_entropy", "fused_linear_cross_entropy"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sum_of_unmasked_token_losses(arch, fused):
    lm, module = _tiny(arch, fused)
    ids = torch.randint(0, 40, (3, 12))
    targets = torch.randint(0, 40, (3, 12))
    targets[1, 5:] = IGNORE_INDEX  # padding
    targets[2, :] = IGNORE_INDEX
    loss = module(ids, targets)
    logits = lm(input_ids=ids).logits.double()
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    head = module.head_weight()
    assert head.grad is not None and head.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [False, True], ids=["lm_head+cross_entropy", "fused_linear_cross_entropy"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_position_ids_reach_the_model(arch, fused):
    """0..T-1 is the default; positions restarting at 5 split each row into two independent documents."""
    lm, module = _tiny(arch, fused)
    ids = torch.randint(0, 40, (2, 12))
    targets = torch.randint(0, 40, (2, 12))
    plain = torch.arange(12).expand(2, 12)  # (B, T)
    torch.testing.assert_close(module(ids, targets, plain), module(ids, targets), rtol=1e-6, atol=1e-5)
    restart = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, 12)  # (B, T)
    packed = module(ids, targets, position_ids=restart)
    alone = module(ids[:, :5], targets[:, :5]) + module(ids[:, 5:], targets[:, 5:])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert (packed - module(ids, targets)).abs() > 1e-3  # the split really changes the loss
