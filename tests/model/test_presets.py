"""Presets and the closed-form parameter count, checked against models actually built (meta device)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from frontier.config.model import ModelConfig
from frontier.errors import ConfigError
from frontier.model.build import build_model
from frontier.model.presets import PRESETS, count_parameters, resolve, swiglu_width


def _built_count(cfg: ModelConfig, vocab: int) -> int:
    with torch.device("meta"):  # shapes only: a 1B model costs nothing
        model = build_model(cfg, vocab)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_count_matches_the_built_model(preset, arch):
    cfg = ModelConfig(arch=arch, preset=preset, max_seq_len=2048)
    assert count_parameters(cfg, 32000) == _built_count(cfg, 32000)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(arch="llama", hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=2, tie_embeddings=False),
        ModelConfig(arch="gpt2", hidden_size=40, num_layers=2, num_heads=5, max_seq_len=77, intermediate_size=100),
        ModelConfig(arch="llama", hidden_size=64, num_layers=1, num_heads=4, intermediate_size=100),
    ],
)
def test_count_matches_for_custom_sizes(cfg):
    assert count_parameters(cfg, 301) == _built_count(cfg, 301)


def test_preset_overrides_sizes_but_keeps_the_rest():
    cfg = resolve(ModelConfig(preset="1b", hidden_size=8, max_seq_len=512, dropout=0.1, tie_embeddings=False))
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size) == (
        2048, 16, 32, 8, 8192)  # fmt: skip
    assert (cfg.max_seq_len, cfg.dropout, cfg.tie_embeddings) == (512, 0.1, False)
    gpt2 = resolve(dataclasses.replace(cfg, arch="gpt2"))
    assert gpt2.num_kv_heads == gpt2.num_heads and gpt2.intermediate_size == 4 * 2048


def test_published_sizes_are_in_the_right_class():
    counts = {name: count_parameters(ModelConfig(preset=name, max_seq_len=2048), 32000) for name in PRESETS}
    assert 100e6 < counts["125m"] < 135e6 and 320e6 < counts["350m"] < 380e6 and 0.95e9 < counts["1b"] < 1.3e9


def test_swiglu_width_and_bad_inputs():
    assert [swiglu_width(h) for h in (64, 128, 768)] == [192, 384, 2048]
    with pytest.raises(ConfigError, match="model.preset: got 'huge'"):
        resolve(ModelConfig(preset="huge"))
    with pytest.raises(ConfigError, match="model.num_kv_heads: gpt2 has no grouped-query attention"):
        resolve(ModelConfig(arch="gpt2", num_heads=4, num_kv_heads=2))
