"""Text generation for any causal LM: greedy, temperature, top-k and top-p sampling, seeded.

A small loop over the model's KV cache rather than `model.generate`, so that the filters are ours
to test, every draw comes from an explicit `torch.Generator` (the global RNG is never touched,
so results depend only on the seed), and the same code serves the evaluate samples and pass@k.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf; logits: (B, V).

    top_k 0 and top_p 1 leave the logits untouched. The nucleus is the smallest set of most likely
    tokens whose probabilities sum to at least top_p (the most likely token is always kept).
    """
    out = logits.clone()
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
    new: list[Tensor] = []
    key = cache_keyword(model)
    cache = None
    step_input = input_ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, use_cache=True, **{key: cache})
        cache = getattr(out, key)
        token = sample_next(out.logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
        if new:
            filler = torch.full_like(token, eos_id) if eos_id is not None else new[-1]
            token = torch.where(done, filler, token)
        new.append(token)
        if eos_id is not None:
            done |= token == eos_id
        tokens = torch.stack(new, dim=1)  # (B, N)
        if is_done is not None:
            done |= is_done(tokens).to(device)
        if bool(done.all()):
            break
        step_input = token[:, None]  # (B, 1)
    if not new:
        return input_ids.new_zeros((batch, 0))
    return torch.stack(new, dim=1)


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

    def is_done(tokens: Tensor) -> Tensor:  # (B, N) -> (B,)
        return torch.tensor([any(s in t for s in stop) for t in decode(tokens)], dtype=torch.bool)

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
