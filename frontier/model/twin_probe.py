"""Whether a routed forward computes what a transformers module computes, asked of a twin of the module.

Names and layouts are how routing finds candidates (frontier.model.kernels); they are not proof. Cohere's
attention has Llama's q/k/v/o projections but rotates interleaved pairs, not halves; a family may one day
swap the roles of ``gate_proj`` and ``up_proj``. So before a module is routed, a twin of it (its own class,
built from the model's config with fresh fp32 weights on the CPU) runs once as transformers wrote it and once
through the frontier forward with the reference kernels (``impl="torch"``), on the same random input. Only a
twin that agrees is routed; one that disagrees keeps its stock forward, with the reason in the coverage line.

The twin, not the module itself: the real weights may be partitioned by ZeRO-3, quantized by bitsandbytes, in
bf16 or on a device, and reading them would gather or dequantize a layer. A twin costs one layer's fp32 weights
for a moment; routing builds one per distinct layout (a 32-layer model probes one or two twins).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from frontier.model.attention import attention_name, register_attention
from frontier.model.fused_modules import FrontierAttention, FrontierMLP

_SEQ = 6  # probe positions: shorter than any sliding window, long enough for a causal pattern
_RTOL, _ATOL = 1e-4, 1e-5  # fp32 twins; the reference kernels differ from the stock code by rounding only


def _twin(config: Any, build: Callable[[Any], nn.Module]) -> tuple[nn.Module, Any]:
    """A fresh fp32 CPU module built by `build` from a copy of `config` (the model keeps its own), and the copy."""
    config = copy.deepcopy(config)
    generator_state = torch.random.get_rng_state()  # probing never moves the run's seeded stream
    try:
        with torch.device("cpu"):
            twin = build(config).float().eval()
        with torch.no_grad():
            for param in twin.parameters():  # norms start at 1 (Gemma's at 0): make every weight matter
                param.normal_(0.0, 0.5 if param.dim() == 1 else param.shape[-1] ** -0.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return twin, config


def _differs(stock: torch.Tensor, routed: torch.Tensor) -> str | None:
    if stock.shape == routed.shape and torch.allclose(stock, routed, rtol=_RTOL, atol=_ATOL):
        return None
    gap = (stock - routed).abs().max().item() if stock.shape == routed.shape else float("nan")
    return f"max difference {gap:.2g}"


def attention_disagrees(
    config: Any, original: type[nn.Module], layer_idx: int, layout: dict[str, object], rotary_dim: int
) -> str | None:
    """None when FrontierAttention with `layout` computes what layer `layer_idx` of class `original` computes
    under the model's `config`, with rotary cos/sin of `rotary_dim` dims and a causal mask; else why not (the
    coverage line's reason)."""
    name = original.__name__
    try:
        twin, config = _twin(config, lambda c: original(c, layer_idx))
    except Exception as exc:  # a constructor of another shape: we cannot vouch for the layer
        return f"{name}: cannot build a twin to probe ({type(exc).__name__})"
    hidden = config.hidden_size
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, _SEQ, hidden, generator=gen)
    cos, sin = torch.randn(1, _SEQ, rotary_dim, generator=gen), torch.randn(1, _SEQ, rotary_dim, generator=gen)
    mask = torch.full((_SEQ, _SEQ), torch.finfo(torch.float32).min).triu(1)[None, None]  # (1, 1, S, S) causal
    register_attention()
    try:
        config._attn_implementation = "eager"  # the family's own eager attention (its softcap included)
        with torch.no_grad():
            stock = twin(hidden_states=x, position_embeddings=(cos, sin), attention_mask=mask)[0]
            twin.__class__ = type(f"Frontier{name}", (FrontierAttention, original), {})
            for key, value in {**layout, "rope_impl": "torch"}.items():
                setattr(twin, key, value)
            config._attn_implementation = attention_name("torch")
            routed = twin(hidden_states=x, position_embeddings=(cos, sin), attention_mask=mask)[0]
    except Exception as exc:
        return f"{name}: its forward does not take the probe ({type(exc).__name__})"
    reason = _differs(stock, routed)
    return None if reason is None else f"{name} computes other than rotate-half RoPE + attention ({reason})"


def mlp_disagrees(config: Any, original: type[nn.Module], fields: dict[str, object]) -> str | None:
    """None when FrontierMLP with `fields` computes what class `original` computes under the model's `config`;
    else why not."""
    name = original.__name__
    try:
        twin, config = _twin(config, original)
    except Exception as exc:
        return f"{name}: cannot build a twin to probe ({type(exc).__name__})"
    x = torch.randn(2, _SEQ, config.hidden_size, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            stock = twin(x)
            twin.__class__ = type(f"Frontier{name}", (FrontierMLP, original), {})
            for key, value in {**fields, "kernel_impl": "torch"}.items():
                setattr(twin, key, value)
            routed = twin(x)
    except Exception as exc:
        return f"{name}: its forward does not take the probe ({type(exc).__name__})"
    reason = _differs(stock, routed)
    return None if reason is None else f"{name} computes other than down(act(gate) * up) ({reason})"
