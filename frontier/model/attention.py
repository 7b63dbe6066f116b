"""Frontier's entries in transformers' attention registries, and how a batch's document ids reach them.

Kernel choice as data. Each ``kernels.attention`` value has its own registered name (``frontier_auto``,
``frontier_triton``, ``frontier_torch``, ``frontier_sdpa``: :func:`attention_name`), whose function is bound to
that implementation when it is made. frontier.model.kernels.apply_kernels writes the name into the model's
config (``set_attn_implementation``), where the attention modules look it up in ``ALL_ATTENTION_FUNCTIONS`` as
they look up "sdpa" or "eager": the choice is per model instance, readable in ``config._attn_implementation``,
and nothing reads it back from attributes set on transformers' modules. Each name has the same mask builder in
``AttentionMaskInterface`` (:func:`frontier_attention_mask`).

Document ids as data. A packed batch's document ids (B, S) are computed once, by the batch builder that knows
where documents start (frontier.train.batches.data), and handed down explicitly (:func:`document_inputs`):

* a model whose attention is a frontier entry gets them as the ``doc_ids`` keyword of its forward, which
  transformers passes unchanged from the causal LM's forward through every decoder layer to the attention
  function (the route its own flash-attention packing keywords, ``cu_seq_lens_q`` and the like, take).
  Under activation checkpointing transformers binds a layer's keywords into the partial it checkpoints, so
  the recomputation in backward sees the very tensor the forward saw, on whatever thread it runs;
* any other attention (GPT-2's, or a Llama left on transformers' "sdpa" / "eager") gets the block-causal
  mask that transformers' own mask builder for that attention makes from the ids (the same builder and mask
  function create_causal_mask uses for packed sequences), passed as a 4D ``attention_mask``, which
  create_causal_mask hands to the layers as is.

The shape follows torchtitan: what the attention needs to know about the batch is built once per batch and
passed down, not found again in each layer. Callers that pack documents pass their ids; position_ids only
feed the position embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    and_masks,
    causal_mask_function,
    packed_sequence_mask_function,
    sdpa_mask,
)

from frontier.kernels.attention import attention, visibility_mask

ATTENTION_PREFIX = "frontier_"
IMPLS = ("auto", "triton", "torch", "sdpa")  # the kernels.attention values (frontier.config.kernels)


def attention_name(impl: str) -> str:
    """The registered attention name of a kernels.attention value: "triton" -> "frontier_triton"."""
    if impl not in IMPLS:
        raise ValueError(f"kernels.attention: {impl!r} is not one of {', '.join(IMPLS)}")
    return ATTENTION_PREFIX + impl


def is_frontier_attention(name: str | None) -> bool:
    """Whether an attn_implementation name is one of frontier's entries (it then takes ``doc_ids``)."""
    return name is not None and name.startswith(ATTENTION_PREFIX) and name[len(ATTENTION_PREFIX) :] in IMPLS


def frontier_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    *,
    impl: str,
    doc_ids: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers attention-interface entry: q (B, Hq, S, D), k/v (B, Hkv, S, D) -> (B, S, Hq, D).

    `impl` is bound at registration (one function per name); `doc_ids` (B, S) is the forward keyword of a
    packed batch. The fused kernel covers training and full-sequence evaluation: causal, no padding mask, no
    dropout, as many keys as queries, with the document mask from `doc_ids`. Anything else (padded batches,
    decoding with a KV cache, attention dropout, a sliding window shorter than the sequence: the mask builder
    below then makes a mask) goes to transformers' SDPA with the mask transformers built for it, narrowed to each
    token's own document when ids were given. A layer that softcaps its logits (``softcap``, Gemma 2) runs the
    eager formula with the cap (:func:`softcapped_attention`): no fused kernel caps.
    """
    causal = bool(kwargs.get("is_causal", module.is_causal))  # transformers' per-module convention, as its SDPA
    softcap = kwargs.pop("softcap", None)  # the family's attention-logit cap (Gemma 2); the window is in the mask
    kwargs.pop("sliding_window", None)
    same_length = query.shape[2] == key.shape[2]
    doc_ids = doc_ids if same_length else None  # decoding from a cache: the prompt's documents are not in view
    if softcap is not None:  # no fused kernel caps logits: the eager formula, documents and window in its mask
        mask = (
            _with_documents(attention_mask, doc_ids, causal, query)
            if same_length or attention_mask is not None
            else None
        )
        return softcapped_attention(module, query, key, value, mask, dropout, scaling, softcap)
    if attention_mask is not None or dropout > 0.0 or not same_length:
        mask = _with_documents(attention_mask, doc_ids, causal, query) if doc_ids is not None else attention_mask
        return sdpa_attention_forward(module, query, key, value, mask, dropout, scaling, **kwargs)
    out = attention(query, key, value, causal=causal, doc_ids=doc_ids, scale=scaling, impl=impl)
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, S, D) -> (B, S, Hq, D)


def _with_documents(
    attention_mask: torch.Tensor | None, doc_ids: torch.Tensor | None, causal: bool, query: torch.Tensor
) -> torch.Tensor | None:
    """transformers' mask for this layer (None: plain causal), narrowed to each token's own document."""
    if attention_mask is None:
        return visibility_mask(query.shape[2], causal=causal, doc_ids=doc_ids, device=query.device)
    if doc_ids is None:
        return attention_mask
    documents = visibility_mask(query.shape[2], causal=causal, doc_ids=doc_ids, device=query.device)
    if attention_mask.dtype == torch.bool:
        return attention_mask & documents
    return attention_mask.masked_fill(~documents, torch.finfo(attention_mask.dtype).min)  # an additive float mask


def softcapped_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma 2's eager attention: softmax(cap * tanh(q k^T * scaling / cap) + mask) v; q (B, Hq, S, D), k/v
    (B, Hkv, L, D), mask bool or additive (B|1, 1, S, L) -> ((B, S, Hq, D), the weights)."""
    group = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(group, dim=1)  # (B, Hkv, L, D) -> (B, Hq, L, D)
    value = value.repeat_interleave(group, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.tanh((query @ key.transpose(-1, -2)) * scaling / softcap) * softcap  # (B, Hq, S, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights  # (B, Hq, S, D) -> (B, S, Hq, D)


def _bound(impl: str) -> Callable[..., tuple[torch.Tensor, None]]:
    """frontier_attention_forward with `impl` fixed: the function registered under attention_name(impl)."""

    def forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        return frontier_attention_forward(module, query, key, value, attention_mask, impl=impl, **kwargs)

    forward.__name__ = forward.__qualname__ = f"{ATTENTION_PREFIX}{impl}_attention_forward"
    return forward


# Made once: registering the same objects again changes nothing (torch.compile's guards see the same function).
ATTENTION_FUNCTIONS: dict[str, Callable[..., tuple[torch.Tensor, None]]] = {
    attention_name(impl): _bound(impl) for impl in IMPLS
}


def frontier_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: object,
) -> torch.Tensor | None:
    """Mask builder of the frontier entries: none for full causal sequences (the kernel masks, documents from
    ``doc_ids`` included); SDPA's mask where SDPA will run (padding, cache offsets)."""
    local_size = kwargs.get("local_size")  # a sliding-window layer's window (create_sliding_window_causal_mask)
    plain = (
        (attention_mask is None or bool(attention_mask.all()))
        and q_length == kv_length
        and isinstance(q_offset, int)
        and q_offset == 0
        and (local_size is None or kv_length <= local_size)  # a window shorter than the sequence must mask
    )
    if plain:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def register_attention() -> None:
    """Make every frontier name a valid attn_implementation (idempotent; registering changes no model)."""
    for name, function in ATTENTION_FUNCTIONS.items():
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, frontier_attention_mask)


def document_inputs(lm: Any, doc_ids: torch.Tensor) -> dict[str, Any]:
    """The forward keywords that keep the packed documents of `doc_ids` (B, S) apart in the causal LM `lm`.

    A frontier attention takes the ids themselves (``doc_ids``). Another attention gets the block-causal mask
    its own mask builder makes from them (``attention_mask``, (B, 1, S, S) in that attention's format): the
    mask create_causal_mask would build for these documents, built once here.
    """
    config = lm.config
    name = config._attn_implementation
    if is_frontier_attention(name):
        return {"doc_ids": doc_ids}
    build = ALL_MASK_ATTENTION_FUNCTIONS.get(name)
    if build is None:
        raise ValueError(f"attention {name!r} has no mask builder in transformers' AttentionMaskInterface")
    batch, seq = doc_ids.shape
    mask = build(
        batch_size=batch,
        q_length=seq,
        kv_length=seq,
        q_offset=0,
        kv_offset=0,
        mask_function=and_masks(causal_mask_function, packed_sequence_mask_function(doc_ids)),
        attention_mask=None,
        allow_is_causal_skip=False,  # a mask is the point: documents are not plain causal
        dtype=lm.get_input_embeddings().weight.dtype,  # eager's additive mask is in the activations' dtype
        config=config,
        use_vmap=False,  # index-based mask functions: broadcasting is enough
        device=doc_ids.device,
    )
    if mask is None:  # a builder that cannot express documents (flash attention's 2D padding mask)
        raise ValueError(f"attention {name!r} cannot mask packed documents; use a frontier or sdpa attention")
    return {"attention_mask": mask}
