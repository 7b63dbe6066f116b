"""Text generation for any causal LM: greedy, temperature, top-k and top-p sampling, seeded.

A small loop over the model's KV cache rather than `model.generate`, so that the filters are ours
to test, every draw comes from an explicit `torch.Generator` (the global RNG is never touched,
so results depend only on the seed), and the same code serves the evaluate samples and pass@k.
The n samples of one prompt run it once and share its cache, which grows in place (no copy per step):
bench/generation_speed.py measures it against `model.generate` on the CPU.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf; logits: (B, V).

    top_k 0 and top_p 1 leave the logits untouched (and return `logits` itself: no copy per step). The nucleus
    is the smallest set of most likely tokens whose probabilities sum to at least top_p (the most likely token
    is always kept).
    """
    out = logits  # masked_fill below is out of place: the caller's tensor is never written
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]  # (B, 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_next(
    logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """One token per row from logits (B, V); temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def model_context(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's positions allow, if its config says."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword (and output field) of the model's KV cache: ``cache`` in transformers 5.x, which
    deprecates ``past_key_values`` (a FutureWarning per call, removed in 5.40), else ``past_key_values``.

    Read from the signature, not a version number: a model of a release before the rename would silently drop
    an unknown ``cache`` into its **kwargs and decode every token without the context. A peft model forwards
    **kwargs to its base model, whose signature is the one that counts.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        names = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # no introspectable signature: the current name
        return "cache"
    return "past_key_values" if "past_key_values" in names and "cache" not in names else "cache"


def _reserve(cache: object, batch: int, capacity: int) -> bool:
    """Turn every layer of a transformers DynamicCache into a `_reserved_layer` of `batch` rows and `capacity`
    positions (a one-row cache is copied into every row); False, and nothing changed, for any other cache."""
    layer_class = _reserved_layer()
    layers = getattr(cache, "layers", None)
    if layer_class is None or not layers:
        return False
    if any(type(layer) is not layer_class.__base__ or not layer.is_initialized for layer in layers):
        return False  # sliding-window, quantized, offloaded or lazily empty layers keep their own update
    if any(layer.keys.shape[0] not in (1, batch) or layer.keys.shape[-2] > capacity for layer in layers):
        return False
    for layer in layers:
        layer.__class__ = layer_class  # the same state, the subclass's update
        layer.reserve(batch, capacity)
    return True


@functools.cache
def _reserved_layer() -> type | None:
    """A transformers DynamicLayer whose keys and values are views of buffers reserved for the whole generation,
    so that a step writes its one position in place. DynamicLayer's own update concatenates: it copies the whole
    cache every step, about half of a decode step on the CPU at a few hundred positions. None without the layered
    cache (transformers before 4.54): the model's cache is used as it is."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class ReservedLayer(DynamicLayer):
        key_buffer: Tensor
        value_buffer: Tensor

        def reserve(self, batch: int, capacity: int) -> None:
            length = self.keys.shape[-2]
            shape = (batch, *self.keys.shape[1:-2], capacity, self.keys.shape[-1])
            self.key_buffer = self.keys.new_empty(shape)
            self.value_buffer = self.values.new_empty((*shape[:-1], self.values.shape[-1]))
            self.key_buffer[..., :length, :] = self.keys  # broadcast: a prompt run once fills every row
            self.value_buffer[..., :length, :] = self.values
            self.keys = self.key_buffer[..., :length, :]
            self.values = self.value_buffer[..., :length, :]

        def update(
            self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
        ) -> tuple[Tensor, Tensor]:
            start = self.get_seq_length()
            end = start + key_states.shape[-2]
            reserved = (
                self.is_initialized
                and self.keys is not None
                and self.keys.data_ptr() == self.key_buffer.data_ptr()  # not replaced (batch_select_indices, reset)
                and self.keys.shape[0] == key_states.shape[0]
                and end <= self.key_buffer.shape[-2]
            )
            if not reserved:
                return super().update(key_states, value_states, *args, **kwargs)
            self.key_buffer[..., start:end, :] = key_states
            self.value_buffer[..., start:end, :] = value_states
            self.keys = self.key_buffer[..., :end, :]
            self.values = self.value_buffer[..., :end, :]
            return self.keys, self.values

    return ReservedLayer


def _prefill(model: torch.nn.Module, input_ids: Tensor, key: str, capacity: int) -> tuple[Tensor, object]:
    """Run the prompts (B, T): the last position's logits (B, V) and the cache, with room for `capacity` positions.

    Identical rows (n samples of one prompt, as `complete` asks) run the prompt once and share its cache: n
    times less prompt work, and the same numbers in every row as running each row.
    """
    batch = input_ids.shape[0]
    shared = batch > 1 and bool((input_ids == input_ids[:1]).all())
    out = model(input_ids=input_ids[:1] if shared else input_ids, use_cache=True, **{key: None})
    cache, logits = getattr(out, key), out.logits[:, -1, :]
    if _reserve(cache, batch, capacity) or not shared:
        return (logits.expand(batch, -1).contiguous() if shared else logits), cache
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(batch)
        return logits.expand(batch, -1).contiguous(), cache
    out = model(input_ids=input_ids, use_cache=True, **{key: None})  # a cache we cannot widen: every row runs it
    return out.logits[:, -1, :], getattr(out, key)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    is_done: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Extend `input_ids` (B, T) by up to `max_new_tokens`; returns only the new tokens (B, N).

    Rows that produced `eos_id` (or that `is_done(new_tokens) -> (B,) bool` marks) are finished:
    they are padded with `eos_id` (or their last token) until every row is done. Prompts longer
    than the model's context minus `max_new_tokens` keep their last tokens.
    """
    ctx = model_context(model)
    if ctx is not None:
        max_new_tokens = min(max_new_tokens, ctx - 1)
        input_ids = input_ids[:, -(ctx - max_new_tokens) :]
    batch = input_ids.shape[0]
    device = input_ids.device
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    new = input_ids.new_zeros((batch, max(max_new_tokens, 0)))  # (B, N): one column per step, no re-stacking
    key = cache_keyword(model)
    cache: object = None
    steps = 0
    for step in range(max_new_tokens):
        if step == 0:
            logits, cache = _prefill(model, input_ids, key, input_ids.shape[1] + max_new_tokens)
        else:
            out = model(input_ids=new[:, step - 1 : step], use_cache=True, **{key: cache})
            cache, logits = getattr(out, key), out.logits[:, -1, :]
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if step:
            filler = torch.full_like(token, eos_id) if eos_id is not None else new[:, step - 1]
            token = torch.where(done, filler, token)
        new[:, step] = token
        steps = step + 1
        if eos_id is not None:
            done |= token == eos_id
        if is_done is not None:
            done |= is_done(new[:, :steps]).to(device)
        if bool(done.all()):
            break
    return new[:, :steps].contiguous()


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        idx = text.find(s)
        if s and idx != -1:
            cut = min(cut, idx)
    return text[:cut]


def complete(
    model: torch.nn.Module,
    tokenizer: object,
    prompt: str,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    stop: Sequence[str] = (),
) -> list[str]:
    """`n` completions of one prompt, drawn as one batch (identical prompts need no padding)."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)  # (1, T)
    if ids.shape[1] == 0:  # an empty prompt: start from BOS, else EOS, as a document boundary
        start = getattr(tokenizer, "bos_token_id", None)
        start = start if start is not None else getattr(tokenizer, "eos_token_id", None)
        ids = torch.tensor([[start or 0]], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    eos_id = getattr(tokenizer, "eos_token_id", None)

    def decode(tokens: Tensor) -> list[str]:
        return tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)

    # A stop string that the latest token completes lies in the last len(stop) tokens (a token decodes to one
    # character or more): decode a tail that long, with a margin, not every row's whole text every step.
    tail = max((len(s) for s in stop), default=0) + 8

    def is_done(tokens: Tensor) -> Tensor:  # (B, N) -> (B,)
        hits = [i for i, t in enumerate(decode(tokens[:, -tail:])) if any(s in t for s in stop)]
        # A tail's first characters may decode otherwise than within the whole text: a hit counts once the
        # whole row shows it. (A stop a tail misses, around a token that decodes to nothing, only lets the row
        # run on: its text is cut at the stop all the same.)
        whole = decode(tokens[hits]) if hits else []
        done = torch.zeros(tokens.shape[0], dtype=torch.bool)
        done[[i for i, t in zip(hits, whole) if any(s in t for s in stop)]] = True
        return done

    tokens = generate(
        model,
        ids.expand(n, -1),  # (n, T)
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eos_id=eos_id,
        is_done=is_done if stop else None,
    )
    if eos_id is not None:
        rows = [row[: row.index(eos_id)] if eos_id in row else row for row in tokens.tolist()]
    else:
        rows = tokens.tolist()
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return [truncate_at_stop(t, stop) for t in texts]
