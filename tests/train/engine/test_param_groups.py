"""Weight decay is off for norms, biases and embeddings (by role, whatever the module names), configurable."""

from __future__ import annotations

import pytest
import torch

from frontier.config.model import ModelConfig
from frontier.config.optimizer import OptimizerConfig
from frontier.errors import ConfigError
from frontier.model.build import build_model
from frontier.train.engine.optimizer import build_client_optimizer, param_groups


def _model(arch: str, tie: bool = True):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, hidden_size=32, num_layers=1, num_heads=4, max_seq_len=16,
                                   tie_embeddings=tie), 50)  # fmt: skip


def _split(model, cfg: OptimizerConfig) -> tuple[set[str], set[str]]:
    groups = param_groups(model, cfg)
    by_decay = {g["weight_decay"]: set(g["names"]) for g in groups}
    return by_decay.get(cfg.weight_decay, set()), by_decay.get(0.0, set())


def test_llama_defaults():
    model = _model("llama", tie=False)
    decay, exempt = _split(model, OptimizerConfig(weight_decay=0.1))
    assert exempt == {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.0.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")
    }
    assert "lm_head.weight" in decay and "model.layers.0.mlp.gate_proj.weight" in decay
    assert len(decay) + len(exempt) == len(list(model.parameters()))  # every parameter exactly once


def test_gpt2_defaults_cover_biases_layernorms_and_both_embeddings():
    model = _model("gpt2")  # tied: lm_head.weight is transformer.wte.weight, listed once
    decay, exempt = _split(model, OptimizerConfig(weight_decay=0.1))
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
            "transformer.h.0.attn.c_attn.bias", "transformer.h.0.ln_1.weight"} <= exempt  # fmt: skip
    assert decay == {f"transformer.h.0.{n}.weight" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_patterns_are_configurable_regexes_on_names_and_roles():
    model = _model("llama", tie=False)
    decay, exempt = _split(model, OptimizerConfig(weight_decay=0.1, no_decay=[r"mlp\.(up|down)_proj", "norm"]))
    assert "model.layers.0.mlp.up_proj.weight" in exempt and "model.layers.0.mlp.gate_proj.weight" in decay
    assert "model.embed_tokens.weight" in decay  # "embedding" no longer listed
    decay, exempt = _split(model, OptimizerConfig(weight_decay=0.1, no_decay=["^llamarmsnorm$"]))  # a class name
    assert exempt == {n for n in decay | exempt if "norm" in n}
    decay, exempt = _split(model, OptimizerConfig(weight_decay=0.1, no_decay=[]))
    assert not exempt


def test_bad_pattern_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optimizer.no_decay: '\(' is not a valid regular expression"):
        param_groups(_model("llama"), OptimizerConfig(no_decay=["("]))


def test_client_optimizer_carries_the_groups():
    model = _model("llama", tie=False)
    cfg = OptimizerConfig(lr=2e-3, weight_decay=0.05, beta2=0.99)
    opt = build_client_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.Optimizer)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert all(g["lr"] == 2e-3 and tuple(g["betas"]) == (0.9, 0.99) for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
