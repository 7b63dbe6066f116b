"""Route a Hugging Face Llama model's hot ops through frontier.kernels, per instance, weights untouched.

Each module of *this* model gets a frontier subclass (``module.__class__`` changes; the object, its parameters
and buffers stay, so the state_dict keeps its keys and tensors and checkpoints stay loadable by plain
transformers) whose forward is our op's own formula, with the kernel choice a field of that subclass set here:

* RMSNorm: ``rms_norm(x) * w``;
* the SwiGLU MLP: ``down(swiglu(gate(x), up(x)))``;
* attention (FrontierAttention): the q/k/v projections, ``frontier.kernels.rope`` on q and k, the attention
  function registered under the config's attention name, the output projection.

The attention kernel is chosen by name: ``kernels.attention`` becomes the registered attn_implementation
``frontier_<impl>`` (frontier.model.attention), set on this model's config. Packed batches hand their document
ids to the model as the ``doc_ids`` forward keyword (frontier.model.attention.document_inputs); nothing here
keeps state between calls, so a forward's result depends on its arguments only (activation checkpointing's
recomputation and torch.compile's traced graph included).

Why the rotary embedding is installed by a per-module forward. transformers' LlamaAttention.forward calls its
module-level ``apply_rotary_pos_emb`` between the projections and the attention function and offers no
per-module hook in between. The other routes cost more than the ~15 lines of this forward: replacing the
module-level function is global (every Llama in the process) and must then learn which model is calling (the
thread-local and forward hooks it took before); an attention function that applied RoPE itself would receive
q and k already rotated by transformers. The forward follows transformers' call contract for
LlamaAttention.forward (hidden_states, position_embeddings, attention_mask, cache, **kwargs: the decoder layer
calls it so), and tests/model/test_apply_kernels.py checks it against the stock module (logits, gradients, KV
cache generation), so a transformers release that changes that contract fails there, not silently.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    eager_attention_forward,
)

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.kernels.rms_norm import rms_norm
from frontier.kernels.rope import rope
from frontier.kernels.swiglu import swiglu
from frontier.model.attention import attention_name, register_attention

_SILU = ("silu", "swish")


class FrontierRMSNorm(LlamaRMSNorm):
    """LlamaRMSNorm computed by frontier.kernels.rms_norm (same parameters)."""

    kernel_impl = "auto"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon, impl=self.kernel_impl)


class FrontierMLP(LlamaMLP):
    """LlamaMLP with silu(gate) * up fused by frontier.kernels.swiglu (same projections)."""

    kernel_impl = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), impl=self.kernel_impl))


class FrontierAttention(LlamaAttention):
    """LlamaAttention with its rotary embedding by frontier.kernels.rope (same projections).

    The attention itself is the function transformers' registry holds under ``config._attn_implementation``
    (a frontier name after apply_kernels), called with the layer's keywords (``doc_ids`` among them).
    """

    rope_impl = "auto"

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, S, hidden), cos/sin (B|1, S, D) -> ((B, S, hidden), attention weights or None)."""
        batch_seq = hidden_states.shape[:-1]  # (B, S)
        heads = (*batch_seq, -1, self.head_dim)  # (B, S, H, D)
        query = self.q_proj(hidden_states).view(heads).transpose(1, 2)  # (B, S, Hq*D) -> (B, Hq, S, D)
        key = self.k_proj(hidden_states).view(heads).transpose(1, 2)  # (B, S, Hkv*D) -> (B, Hkv, S, D)
        value = self.v_proj(hidden_states).view(heads).transpose(1, 2)  # (B, S, Hkv*D) -> (B, Hkv, S, D)
        cos, sin = position_embeddings
        query, key = rope(query, key, cos, sin, impl=self.rope_impl)
        if cache is not None:  # decoding (generation after training): the keys and values seen so far
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        out = out.reshape(*batch_seq, -1).contiguous()  # (B, S, Hq, D) -> (B, S, Hq*D)
        return self.o_proj(out), weights


def _swap(module: nn.Module, cls: type[nn.Module], **fields: str) -> None:
    module.__class__ = cls  # same object, same parameters: only the forward changes
    for name, value in fields.items():
        setattr(module, name, value)


def apply_kernels(model: nn.Module, cfg: KernelsConfig) -> nn.Module:
    """Route this Llama model's RMSNorm, rotary embedding, SwiGLU and attention through frontier.kernels.

    Per-op choice from `cfg` ("auto": Triton on CUDA when the kernel handles the inputs, else the op's
    fallback -- see frontier.kernels.dispatch; "torch": the reference; "triton": the kernel, which then
    requires CUDA or TRITON_INTERPRET=1; attention "sdpa": torch's SDPA through attention_sdpa). The loss
    (cfg.cross_entropy, fused_linear_cross_entropy) is the trainer's. A model without Llama modules is returned
    as is, unless a kernel was explicitly asked for. Idempotent; returns the same model object.
    """
    found = {"rms_norm": 0, "swiglu": 0, "rope": 0}
    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            _swap(module, FrontierRMSNorm, kernel_impl=cfg.rms_norm)
            found["rms_norm"] += 1
        elif isinstance(module, LlamaMLP) and module.config.hidden_act in _SILU:
            _swap(module, FrontierMLP, kernel_impl=cfg.swiglu)
            found["swiglu"] += 1
        elif isinstance(module, LlamaAttention):
            _swap(module, FrontierAttention, rope_impl=cfg.rope)
            found["rope"] += 1
    found["attention"] = found["rope"]
    for key, count in found.items():
        if not count and getattr(cfg, key) == "triton":
            raise ConfigError(
                f"kernels.{key}: 'triton' was requested but {type(model).__name__} has no Llama module it "
                "applies to (the fused kernels support model.arch=llama with hidden_act=silu); use 'auto' or 'torch'"
            )
    if not found["attention"]:
        return model  # not a Llama: nothing to route
    # every kernels.attention value is a frontier entry: one SDPA path (attention_sdpa), one document mask
    register_attention()
    model.set_attn_implementation(attention_name(cfg.attention))
    return model
