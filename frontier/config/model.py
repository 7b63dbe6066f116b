"""Schema of the model: architecture and size, or a preset, or a local HF directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds


@dataclass
class ModelConfig:
    arch: Literal["llama", "gpt2"] = "llama"
    preset: str | None = None  # a named size (see frontier.model.presets); overrides the sizes below
    init_from: str | None = None  # a local Hugging Face model directory to continue from
    hidden_size: int = field(default=192, metadata=bounds(ge=8, le=65536))
    num_layers: int = field(default=4, metadata=bounds(ge=1, le=1024))
    num_heads: int = field(default=4, metadata=bounds(ge=1, le=1024))
    num_kv_heads: int | None = field(default=None, metadata=bounds(ge=1, le=1024))  # None: = num_heads
    intermediate_size: int | None = field(default=None, metadata=bounds(ge=1, le=1048576))  # None: from hidden_size
    max_seq_len: int = field(default=128, metadata=bounds(ge=1, le=1048576))
    rope_theta: float = field(default=10000.0, metadata=bounds(gt=0, le=1e12))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    tie_embeddings: bool = True
    # gpt2's MLP activation. gelu_tanh: GPT-2's own (transformers' gelu_new), computed by torch's fused
    # gelu(approximate="tanh") op — the same function in one kernel instead of seven elementwise ops;
    # gelu: the exact (erf) GELU, as nanoGPT's GPT. Llama's MLP is SwiGLU: null only.
    mlp_activation: Literal["gelu_tanh", "gelu"] | None = None  # None: the architecture's own
    init_std: float = field(default=0.02, metadata=bounds(gt=0, le=1))  # above 1 the activations explode

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size: {self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.arch == "llama" and self.mlp_activation is not None:
            raise ValueError(
                f"mlp_activation: {self.mlp_activation!r} applies to arch gpt2 only; llama's MLP is SwiGLU (leave it null)"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_kv_heads: {kv} must divide num_heads={self.num_heads}")
