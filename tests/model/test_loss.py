"""The training module returns the SUM of non-padding token losses, through frontier's loss kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frontier.config.kernels import KernelsConfig
from frontier.config.model import ModelConfig
from frontier.model.attention import document_inputs
from frontier.model.build import build_model
from frontier.model.kernels import apply_kernels
from frontier.model.loss import IGNORE_INDEX, CausalLMWithLoss


def _tiny(arch: str, fused: bool) -> tuple[torch.nn.Module, CausalLMWithLoss]:
    """A 1-layer model of `arch` (vocab 40, context 12) and its loss module, seeded; "llama-frontier": with
    frontier's kernels applied (references)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch.split("-")[0], hidden_size=32, num_layers=1, num_heads=4, max_seq_len=12)
    lm = build_model(cfg, 40)
    if arch == "llama-frontier":
        apply_kernels(lm, KernelsConfig(attention="torch", rms_norm="torch", rope="torch", swiglu="torch"))
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
@pytest.mark.parametrize("arch", ["llama", "llama-frontier", "gpt2"])
def test_position_and_document_ids_reach_the_model(arch, fused):
    """0..T-1 is the default; document ids (with positions restarting at 5) split each row into two
    independent documents, whatever the model's attention (llama-frontier: frontier's entry, which takes the
    ids; llama and gpt2: transformers' SDPA, which gets the documents' mask)."""
    lm, module = _tiny(arch, fused)
    ids = torch.randint(0, 40, (2, 12))
    targets = torch.randint(0, 40, (2, 12))
    plain = torch.arange(12).expand(2, 12)  # (B, T)
    torch.testing.assert_close(module(ids, targets, plain), module(ids, targets), rtol=1e-6, atol=1e-5)
    restart = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, 12)  # (B, T)
    doc_ids = (torch.arange(12) >= 5).long().expand(2, 12)  # (B, T)
    packed = module(ids, targets, position_ids=restart, doc_ids=doc_ids)
    alone = module(ids[:, :5], targets[:, :5]) + module(ids[:, 5:], targets[:, 5:])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert (packed - module(ids, targets)).abs() > 1e-3  # the split really changes the loss


@pytest.mark.parametrize("attn", ["frontier_torch", "sdpa", "eager"])
def test_document_ids_enter_the_model_in_its_attentions_form(attn):
    """frontier's entries take the ids; transformers' own attentions get their mask builder's block-causal mask."""
    from frontier.kernels.attention import visibility_mask

    lm, _ = _tiny("llama", False)
    if attn.startswith("frontier"):
        apply_kernels(lm, KernelsConfig(attention="torch"))
    else:
        lm.set_attn_implementation(attn)
    doc_ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 2, 2, 2]])  # (B, S)
    inputs = document_inputs(lm, doc_ids)
    if attn.startswith("frontier"):
        assert inputs.keys() == {"doc_ids"} and inputs["doc_ids"] is doc_ids
        return
    visible = visibility_mask(5, causal=True, doc_ids=doc_ids, device=doc_ids.device)  # (B, 1, S, S)
    mask = inputs["attention_mask"]
    assert mask.shape == (2, 1, 5, 5)
    assert torch.equal(mask if attn == "sdpa" else mask == 0, visible)  # eager: additive, 0 where visible
