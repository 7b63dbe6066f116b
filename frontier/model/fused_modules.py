"""The forwards that run a transformers module through frontier.kernels, whatever family the module comes from.

Each class here is a mixin: frontier.model.kernels builds, per original class, ``type("Frontier" + name,
(Mixin, Original), {})`` and assigns it to ``module.__class__``. The object, its parameters and buffers stay, so
the state_dict keeps its keys and tensors and a checkpoint stays loadable by plain transformers; ``isinstance``
against the original class (what transformers' own code checks) still holds. What a forward needs to know about
its module's structure (an offset norm, a fused gate/up projection, the attention's layout) is a field set when
the module is routed (frontier.model.kernels decides it from the module and its config), so each forward is the
op's formula and nothing else.

Why the attention forward is ours. transformers' attention modules call their module-level
``apply_rotary_pos_emb`` between the projections and the attention function and offer no hook in between;
replacing that function is global (every model of the family in the process). The forward below follows
transformers' call contract for a decoder layer's attention (hidden_states, position_embeddings, attention_mask,
cache, **kwargs) and the layouts the families share: separate or fused q/k/v projections, optional per-head q/k
norms, full or partial rotary dimensions, ``o_proj`` or ``dense`` out. tests/model/test_families.py checks it
against each family's stock module (logits, gradients, cached generation), so a transformers release that
changes a family's attention fails there, not silently.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from frontier.kernels.geglu import geglu
from frontier.kernels.rms_norm import rms_norm
from frontier.kernels.rope import rope
from frontier.kernels.swiglu import swiglu

GATED_OPS = {"swiglu": swiglu, "geglu": geglu}


class FrontierRMSNorm(nn.Module):
    """RMSNorm by frontier.kernels.rms_norm: ``rms_norm(x) * w``, or ``* (1 + w)`` where the module offsets its
    weight (Gemma's norms keep w around 0)."""

    kernel_impl = "auto"
    weight_offset = 0.0
    norm_eps = 1e-6

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight + self.weight_offset if self.weight_offset else self.weight
        return rms_norm(hidden_states, weight, self.norm_eps, impl=self.kernel_impl)


class FrontierMLP(nn.Module):
    """A gated MLP, ``down(act(gate(x)) * up(x))``, with act(gate) * up fused by frontier.kernels.swiglu (SiLU)
    or frontier.kernels.geglu (tanh GELU); gate and up from two projections or one fused ``gate_up_proj``."""

    kernel_op = "swiglu"
    kernel_impl = "auto"
    fused_gate_up = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gate_up:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (..., 2I) -> 2 x (..., I), gate first (Phi-3)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(GATED_OPS[self.kernel_op](gate, up, impl=self.kernel_impl))


class FrontierAttention(nn.Module):
    """A decoder layer's self-attention with its rotary embedding by frontier.kernels.rope.

    The attention itself is the function transformers' registry holds under ``config._attn_implementation`` (a
    frontier name once routed), called with the layer's keywords (``doc_ids`` among them) and the family's own
    ``sliding_window`` / ``softcap`` values, so that function decides per layer what it can fuse.
    """

    rope_impl = "auto"
    qkv_fused = False
    out_proj = "o_proj"  # or "dense" (phi)
    qk_norm: tuple[str, str] | None = None  # ("q_norm", "k_norm"), ("q_layernorm", "k_layernorm") or none
    window: int | None = None  # the sliding window the family passes for this layer
    softcap: float | None = None  # attention-logit softcapping (Gemma 2)

    def _projections(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, hidden) -> q (B, S, Hq*D), k and v (B, S, Hkv*D)."""
        if not self.qkv_fused:
            return self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        config = self.config
        q_size = config.num_attention_heads * self.head_dim
        kv_size = config.num_key_value_heads * self.head_dim
        qkv = self.qkv_proj(hidden_states)  # (B, S, (Hq + 2 Hkv) D)
        return qkv[..., :q_size], qkv[..., q_size : q_size + kv_size], qkv[..., q_size + kv_size :]

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, S, hidden), cos/sin (B|1, S, R) with R <= D -> ((B, S, hidden), weights or None)."""
        batch_seq = hidden_states.shape[:-1]  # (B, S)
        heads = (*batch_seq, -1, self.head_dim)  # (B, S, H, D)
        q, k, v = self._projections(hidden_states)
        query = q.view(heads).transpose(1, 2)  # (B, S, Hq*D) -> (B, Hq, S, D)
        key = k.view(heads).transpose(1, 2)  # (B, S, Hkv*D) -> (B, Hkv, S, D)
        value = v.view(heads).transpose(1, 2)  # (B, S, Hkv*D) -> (B, Hkv, S, D)
        if self.qk_norm is not None:  # per head, over D: the same before or after the transpose
            query, key = getattr(self, self.qk_norm[0])(query), getattr(self, self.qk_norm[1])(key)
        cos, sin = position_embeddings
        rotary = cos.shape[-1]
        if rotary == self.head_dim:
            query, key = rope(query, key, cos, sin, impl=self.rope_impl)
        else:  # partial rotary (phi-2): the first R dims rotate, the rest pass through
            q_rot, k_rot = rope(query[..., :rotary], key[..., :rotary], cos, sin, impl=self.rope_impl)
            query = torch.cat((q_rot, query[..., rotary:]), dim=-1)
            key = torch.cat((k_rot, key[..., rotary:]), dim=-1)
        if cache is not None:  # decoding (generation after training): the keys and values seen so far
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        family = {"sliding_window": self.window} if self.window is not None else {}
        if self.softcap is not None:
            family["softcap"] = self.softcap
        out, weights = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **family,
            **kwargs,
        )
        out = out.reshape(*batch_seq, -1).contiguous()  # (B, S, Hq, D) -> (B, S, Hq*D)
        return getattr(self, self.out_proj)(out), weights
