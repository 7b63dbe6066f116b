"""Route a Hugging Face Llama model's hot ops through frontier.kernels, per instance, weights untouched.

Only transformers' public extension points are used, so a transformers release that rewrites the bodies
of its Llama classes cannot change what a patched model computes:

* attention: the "frontier" entry of transformers' AttentionInterface / AttentionMaskInterface, chosen
  with ``model.set_attn_implementation`` (per model instance);
* RMSNorm and the SwiGLU MLP: each module of *this* model gets a subclass whose forward is our op's own
  formula (``rms_norm(x) * w``, ``down(silu(gate(x)) * up(x))``), never a copy of transformers' code;
* the rotary embedding: forward pre/post hooks on each attention module of this model name the rope
  implementation for the duration of that module's call, and transformers' module-level
  ``apply_rotary_pos_emb`` is wrapped once by a router that uses it only inside such a call (any other
  model, and any call outside a patched module, gets transformers' own function unchanged). Should a
  transformers release stop calling that function, the patched model still computes transformers' rope.

Parameters and buffers are the same objects as before, so the state_dict keeps its keys and tensors and
checkpoints stay loadable by plain transformers.

Document masking: when a batch of packed documents carries position_ids that restart at each
document, the "frontier" attention derives per-token document ids from them (the way transformers
detects packed sequences) and no token attends across a document boundary, whichever kernel runs
(Triton's document mask, torch's SDPA or the reference with a mask), attention dropout included.
Every ``kernels.attention`` value of a Llama model goes through that entry (``sdpa`` reaches
frontier.kernels.attention's SDPA path with the same document mask); GPT-2 models use transformers' own
attention, whose mask builder detects the same restarting positions (create_causal_mask).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, find_packed_sequence_indices, sdpa_mask
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.kernels.rms_norm import rms_norm
from frontier.kernels.rope import rope
from frontier.kernels.swiglu import swiglu

ATTENTION_NAME = "frontier"
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


# --- rotary embedding: routed per attention-module call -------------------------------------------------


class _RopeRoute(threading.local):
    """Per thread: the rope impl of the patched attention module now running (None outside one), and a call
    count for tests. Class defaults, so every thread has both attributes from the start: dynamo accepts
    setting an existing attribute inside torch.utils.checkpoint's traced layers, not creating one."""

    impl: str | None = None
    calls: int = 0


_ROPE_IMPL = _RopeRoute()
_ROPE_HOOKS = "_frontier_rope_hooks"  # attribute holding a module's hook handles (apply_kernels is idempotent)


def _rope_router(hf_rope: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):  # transformers' signature, untyped like it
        impl = _ROPE_IMPL.impl
        unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
        if impl is None or unsqueeze_dim != 1 or cos.dim() != 3:
            return hf_rope(q, k, cos, sin, *args, **kwargs)
        if not torch.compiler.is_compiling():  # a counter for tests; traced, it would recompile every call
            _ROPE_IMPL.calls += 1
        return rope(q, k, cos, sin, impl=impl)

    apply_rotary_pos_emb.frontier_wraps = hf_rope  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


def _install_rope_router() -> None:
    """Wrap transformers' apply_rotary_pos_emb once; outside a patched module's call it is unchanged."""
    current = modeling_llama.apply_rotary_pos_emb
    if not hasattr(current, "frontier_wraps"):
        modeling_llama.apply_rotary_pos_emb = _rope_router(current)


def _route_rope(module: nn.Module, impl: str) -> None:
    """Make `module`'s calls use frontier.kernels.rope with `impl` (hooks: entering sets it, leaving clears it)."""
    module.kernel_impl = impl
    if getattr(module, _ROPE_HOOKS, None):
        return

    def enter(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        _ROPE_IMPL.impl = mod.kernel_impl

    def leave(mod: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        _ROPE_IMPL.impl = None

    handles = (
        module.register_forward_pre_hook(enter, with_kwargs=True),
        module.register_forward_hook(leave, with_kwargs=True, always_call=True),
    )
    setattr(module, _ROPE_HOOKS, handles)


def rope_calls() -> int:
    """How many rotary embeddings this thread has routed to frontier.kernels.rope (for tests)."""
    return _ROPE_IMPL.calls


def frontier_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface entry: q (B, Hq, S, D), k/v (B, Hkv, S, D) -> (B, S, Hq, D).

    The fused kernel covers training and full-sequence evaluation: causal, no padding mask, no
    dropout, as many keys as queries. Anything else (padded batches, decoding with a KV cache,
    attention dropout) goes to transformers' SDPA with the mask transformers built for it; packed
    documents under attention dropout get the document mask built here, since frontier_attention_mask
    left it to the kernel.
    """
    from frontier.kernels.attention import attention, visibility_mask

    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    same_length = query.shape[2] == key.shape[2]
    doc_ids = _doc_ids(kwargs.get("position_ids"), query.shape[0]) if same_length else None
    if attention_mask is not None or dropout > 0.0 or not same_length:
        if attention_mask is None and doc_ids is not None:
            attention_mask = visibility_mask(query.shape[2], causal=causal, doc_ids=doc_ids, device=query.device)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)

    impl = getattr(module, "attention_impl", "auto")  # auto: frontier.kernels.dispatch's one rule
    out = attention(query, key, value, causal=causal, doc_ids=doc_ids, scale=scaling, impl=impl)
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, S, D) -> (B, S, Hq, D)


# Document ids of the position_ids tensor a forward hands to every layer, decided once per tensor and kept on
# it (an attribute): every layer of the forward, and every layer recomputed in backward under activation
# checkpointing (possibly on autograd's device thread, after the caller's block has closed), gets the same
# answer. Without a word from the caller, deciding reads the device once (is anything packed?).
_DOC_IDS_ATTR = "_frontier_doc_ids"
# What the caller of this thread's forward said about its positions (positions_from_caller): False, none
# given (transformers' own 0..T-1: one document per row); True, packed-document positions; unset, unknown.
_CALLER = threading.local()


@contextmanager
def positions_from_caller(packed: bool) -> Iterator[None]:
    """Within the block this thread's forwards take their document ids from what the caller knows, with no
    device read: not packed -> none (plain causal attention); packed -> from the positions, on the device."""
    previous = getattr(_CALLER, "packed", None)
    _CALLER.packed = packed
    try:
        yield
    finally:
        _CALLER.packed = previous


def document_index(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) positions -> (B, S) document index: a new document wherever a position is not its left
    neighbour's + 1 (transformers' packed-sequence rule), computed on the device without reading it."""
    before = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)  # (B, S): 1 inside a document
    return (before != 1).cumsum(-1)


def _doc_ids(position_ids: object, batch: int) -> torch.Tensor | None:
    """(B, S) document index per token from positions that restart per packed document; None if unpacked.

    Packed positions the caller vouched for always get an index (the kernel's document mask), even a window
    inside one long document: telling that apart would read the device.
    """
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2:
        return None
    if torch.compiler.is_compiling():  # traced: no device read to save, and no Python state in the graph
        return find_packed_sequence_indices(position_ids.expand(batch, -1))
    key = (position_ids._version, batch)
    decided = getattr(position_ids, _DOC_IDS_ATTR, None)
    if decided is not None and decided[0] == key:  # this forward's earlier layers, or its recompute
        return decided[1]
    packed = getattr(_CALLER, "packed", None)
    expanded = position_ids.expand(batch, -1)
    if packed is None:
        doc_ids = find_packed_sequence_indices(expanded)
    else:
        doc_ids = document_index(expanded) if packed else None
    setattr(position_ids, _DOC_IDS_ATTR, (key, doc_ids))
    return doc_ids


def frontier_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: object,
) -> torch.Tensor | None:
    """Mask builder for "frontier": none for full causal sequences (the kernel masks, packed documents
    included); SDPA's mask where SDPA will run (padding, cache offsets)."""
    plain = (
        (attention_mask is None or bool(attention_mask.all()))
        and q_length == kv_length
        and isinstance(q_offset, int)
        and q_offset == 0
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
    """Make "frontier" a valid attn_implementation (idempotent; registering a name changes no model)."""
    AttentionInterface.register(ATTENTION_NAME, frontier_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, frontier_attention_mask)


def _swap(module: nn.Module, cls: type[nn.Module], **attrs: str) -> None:
    module.__class__ = cls  # same object, same parameters: only the forward changes
    for name, value in attrs.items():
        setattr(module, name, value)


def apply_kernels(model: nn.Module, cfg: KernelsConfig) -> nn.Module:
    """Route this Llama model's RMSNorm, rotary embedding, SwiGLU and attention through frontier.kernels.

    Per-op choice from `cfg` ("auto": Triton on CUDA when the kernel handles the inputs, else the op's
    fallback -- see frontier.kernels.dispatch; "torch": the reference; "triton": the kernel, which then
    requires CUDA or TRITON_INTERPRET=1; attention "sdpa": torch's SDPA through attention_sdpa). The loss (cfg.cross_entropy, fused_linear_cross_entropy) is the trainer's.
    A model without Llama modules is returned as is, unless a kernel was explicitly asked for.
    Returns the same model object.
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
            module.attention_impl = cfg.attention  # read by the "frontier" attention function
            _route_rope(module, cfg.rope)
            found["rope"] += 1
    found["attention"] = found["rope"]
    if found["rope"]:
        _install_rope_router()
    for key, count in found.items():
        if not count and getattr(cfg, key) == "triton":
            raise ConfigError(
                f"kernels.{key}: 'triton' was requested but {type(model).__name__} has no Llama module it "
                "applies to (the fused kernels support model.arch=llama with hidden_act=silu); use 'auto' or 'torch'"
            )
    if not found["attention"]:
        return model  # not a Llama: nothing to route
    # every kernels.attention value goes through the "frontier" entry: one SDPA path (attention_sdpa)
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    return model
