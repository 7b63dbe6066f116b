"""Models built through transformers from config, and continued from a local HF directory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from frontier.config.model import ModelConfig
from frontier.errors import ConfigError
from frontier.model.build import build_model

LLAMA = ModelConfig(arch="llama", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=16,
                    rope_theta=5000.0, init_std=0.05)  # fmt: skip


def test_llama_style_architecture():
    torch.manual_seed(0)
    model = build_model(LLAMA, 70, bos_id=1, eos_id=2, pad_id=0)
    assert isinstance(model, LlamaForCausalLM)
    c = model.config
    assert (c.num_key_value_heads, c.hidden_act, c.rope_parameters["rope_theta"], c.vocab_size) == (
        2,
        "silu",
        5000.0,
        70,
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied by default
    assert type(model.model.norm).__name__ == "LlamaRMSNorm"
    assert model.model.layers[0].self_attn.k_proj.out_features == 2 * 8  # GQA: 2 kv heads of dim 8
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 0)
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.04 < std < 0.06  # init_std is honoured


def test_gpt2_style_with_dropout():
    cfg = ModelConfig(arch="gpt2", hidden_size=32, num_layers=1, num_heads=4, max_seq_len=16, dropout=0.2)
    model = build_model(cfg, 50)
    assert isinstance(model, GPT2LMHeadModel)
    assert (model.config.resid_pdrop, model.config.attn_pdrop, model.config.n_inner) == (0.2, 0.2, 128)
    model.train()
    ids = torch.randint(0, 50, (2, 16))
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout active in training


def test_init_from_a_local_directory(tmp_path):
    torch.manual_seed(1)
    source = build_model(LLAMA, 70)
    source.save_pretrained(tmp_path / "hf")
    cfg = ModelConfig(arch="gpt2", hidden_size=8, init_from=str(tmp_path / "hf"))  # sizes ignored: the dir decides
    model = build_model(cfg, 60)
    assert isinstance(model, LlamaForCausalLM)
    for (name, a), (_, b) in zip(source.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name


def test_init_from_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.init_from: .* is not a Hugging Face model directory"):
        build_model(ModelConfig(init_from=str(tmp_path / "nope")), 10)
    build_model(LLAMA, 70).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConfigError, match="has 70 embedding rows but the tokens use a 100-token vocabulary"):
        build_model(ModelConfig(init_from=str(tmp_path / "hf")), 100)


GPT2 = ModelConfig(arch="gpt2", hidden_size=32, num_layers=2, num_heads=4, max_seq_len=16)


def _gpt2_with(activation_function: str) -> GPT2LMHeadModel:
    """GPT2's model with its MLP activation set to transformers' `activation_function`."""
    from frontier.model.build import hf_config

    config = hf_config(GPT2, 50, bos_id=None, eos_id=None, pad_id=None)
    config.activation_function = activation_function
    return GPT2LMHeadModel(config)


def test_gpt2_default_activation_is_gpt2s_gelu_new_in_one_fused_op():
    torch.manual_seed(0)
    model = build_model(GPT2, 50)
    assert model.config.activation_function == "gelu_pytorch_tanh"
    assert type(model.transformer.h[0].mlp.act).__name__ == "GELUTanh"
    reference = _gpt2_with("gelu_new")  # GPT-2's own activation, same init
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (3, 16))
    out, ref = model(ids, labels=ids), reference(ids, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    ref.loss.backward()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gpt2_exact_gelu_is_nanogpts_and_differs_from_tanh():
    exact = build_model(dataclasses.replace(GPT2, mlp_activation="gelu"), 50)
    assert exact.config.activation_function == "gelu"
    x = torch.linspace(-4, 4, 101)
    act = exact.transformer.h[0].mlp.act
    torch.testing.assert_close(act(x), torch.nn.functional.gelu(x), rtol=0, atol=0)
    assert (act(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs().max() > 1e-5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.arch=llama", "model.mlp_activation=gelu"], r"model\.mlp_activation: 'gelu' applies to arch gpt2 only"),
        (["model.arch=gpt2", "model.mlp_activation=relu"], r"model\.mlp_activation"),
        (["model.arch=gpt2", "model.mlp_activation=GELU"], r"model\.mlp_activation"),
    ],
)
def test_mlp_activation_errors_name_the_key(overrides, message):
    from frontier.config import load_params

    with pytest.raises(ConfigError, match=message):
        load_params(None, overrides)


def test_a_fresh_model_in_half_precision_is_the_fp32_init_rounded_once():
    """The same seed gives the same weights at every precision (DeepSpeed's own cast at initialize); buffers
    such as RoPE's inverse frequencies stay fp32, as DeepSpeed leaves them."""
    torch.manual_seed(4)
    full = build_model(LLAMA, 70)
    torch.manual_seed(4)
    half = build_model(LLAMA, 70, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(full.named_parameters(), half.named_parameters(), strict=True):
        assert b.dtype == torch.bfloat16 and torch.equal(b, a.to(torch.bfloat16)), name
    assert half.lm_head.weight is half.model.embed_tokens.weight  # still tied
    assert half.model.rotary_emb.inv_freq.dtype == torch.float32
