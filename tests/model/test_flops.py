"""FLOPs per token: 6N + 12 L H S with N the parameters that do matrix multiplies."""

from __future__ import annotations

import torch

from frontier.config.model import ModelConfig
from frontier.model.build import build_model
from frontier.model.flops import flops_per_token, matmul_parameters, model_flops_per_token


def _model(**kw):
    with torch.device("meta"):
        return build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=4, max_seq_len=16, **kw), 100)


def _total(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_tied_embedding_counts_once_as_the_output_projection():
    model = _model(arch="llama", tie_embeddings=True)
    assert matmul_parameters(model) == _total(model)


def test_untied_input_embedding_is_a_lookup():
    model = _model(arch="llama", tie_embeddings=False)
    assert matmul_parameters(model) == _total(model) - 100 * 32


def test_gpt2_position_table_is_a_lookup():
    model = _model(arch="gpt2", tie_embeddings=True)
    assert matmul_parameters(model) == _total(model) - 16 * 32


def test_formula():
    assert flops_per_token(1000, 2, 32, 16) == 6 * 1000 + 12 * 2 * 32 * 16
    model = _model(arch="llama")
    assert model_flops_per_token(model, 16) == 6 * matmul_parameters(model) + 12 * 2 * 32 * 16
