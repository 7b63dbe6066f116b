"""Routing is not fooled by names: a module with a candidate's names and layout but other math keeps its own
forward, with the reason in the coverage line (frontier.model.twin_probe, frontier.model.kernels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import CohereConfig, CohereForCausalLM
from transformers.models.llama import modeling_llama

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.model.kernels import route_kernels
from tests.model.test_apply_kernels import _ids, tiny_llama


def _cohere() -> CohereForCausalLM:
    torch.manual_seed(0)
    config = CohereConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return CohereForCausalLM(config).eval()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids(2, 12)).logits


def test_interleaved_rope_is_not_taken_for_rotate_half() -> None:
    """Cohere's attention has Llama's projections but rotates interleaved pairs: it keeps its own forward."""
    stock, routed = _cohere(), _cohere()
    line = route_kernels(routed, KernelsConfig()).line()
    assert "rope 0/2 (CohereAttention computes other than rotate-half RoPE + attention" in line
    assert "swiglu 2/2" in line  # its MLP is Llama's: fused
    torch.testing.assert_close(_logits(routed), _logits(stock), rtol=1e-5, atol=1e-5)


def test_triton_rope_on_interleaved_rope_is_one_error_naming_the_module() -> None:
    with pytest.raises(ConfigError, match=r"kernels\.rope: 'triton' .* model\.layers\.0\.self_attn .*CohereAttention"):
        route_kernels(_cohere(), KernelsConfig(rope="triton"))


class _SwappedMLP(modeling_llama.LlamaMLP):
    """The names of Llama's MLP, the roles of gate and up swapped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))


class _BiasedNorm(modeling_llama.LlamaRMSNorm):
    """An RMSNorm plus a bias, zero at initialisation (where a numerical probe of the weight alone agrees)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, eps)
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states) + self.bias


def test_swapped_gate_and_up_are_not_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modeling_llama, "LlamaMLP", _SwappedMLP)  # the model is built with the look-alike
    stock, routed = tiny_llama(), tiny_llama()
    line = route_kernels(routed, KernelsConfig()).line()
    assert "mlp 0/2 (_SwappedMLP computes other than down(act(gate) * up)" in line
    torch.testing.assert_close(_logits(routed), _logits(stock), rtol=1e-5, atol=1e-5)


def test_a_norm_with_a_bias_is_not_routed() -> None:
    model = tiny_llama()
    model.model.norm = _BiasedNorm(64)
    line = route_kernels(model, KernelsConfig()).line()
    assert "rms_norm 4/5 (_BiasedNorm: parameters besides its weight: model.norm)" in line


class _NearSiLU(nn.Module):
    """SiLU for |t| <= 8, zero beyond: equal to SiLU on the usual probe interval."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.where(t.abs() > 8, torch.zeros_like(t), nn.functional.silu(t))


def test_an_activation_that_is_silu_only_near_zero_is_not_swiglu() -> None:
    model = tiny_llama()
    for layer in model.model.layers:
        layer.mlp.act_fn = _NearSiLU()
    assert "mlp 0/2 (not gated by SiLU or tanh GELU" in route_kernels(model, KernelsConfig()).line()


def test_probing_leaves_the_seeded_random_stream_alone() -> None:
    model = tiny_llama()
    torch.manual_seed(123)
    route_kernels(model, KernelsConfig())
    after_routing = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after_routing, torch.rand(4))
