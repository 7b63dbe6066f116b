"""Which tokens of a chat are the assistant's, read off the tokenizer's chat template itself.

Two ways, as the template allows:

- a template that marks assistant text with ``{% generation %} ... {% endgeneration %}``: transformers'
  ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the mask;
- otherwise a rendering difference. Assistant turn k begins where the conversation before it, rendered with
  ``add_generation_prompt=True``, ends; it ends where the conversation through it stops agreeing with the
  conversation going on after it (the next message, or for the last turn a probe user message), less the
  whitespace the template writes between turns. So the turn is its content and the template's end-of-turn
  token(s): ``<|im_end|>`` (ChatML), ``<|eot_id|>`` (Llama 3), ``</s>`` (Mistral), ``<end_of_turn>``
  (Gemma), ``<|end|>`` (Phi-3) - never an ``eos_token`` the template does not write there.

Either way the whole conversation is rendered and tokenized once (no special tokens added: the template
writes its own BOS), and a token is learned when its characters overlap a learned span (transformers'
own rule, so a token the tokenizer merges across the turn's first character is the assistant's). A
template that renders a conversation's prefix differently from the whole (so no difference can be read
off) is a TemplateError that says to mark generation in the template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
PROBE = {"role": "user", "content": "probe"}  # what goes on after the last turn, to find where that turn ends


class TemplateError(ValueError):
    """The chat template cannot render a conversation, or no mask can be read off it (one line; the caller
    adds file and line)."""


@dataclass(frozen=True)
class ChatTokens:
    """A conversation rendered by the chat template and tokenized once; `learned` marks the tokens to learn."""

    ids: np.ndarray  # (T,) int64
    learned: np.ndarray  # (T,) bool


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # the template's raise_exception(), or anything else it fails on
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TemplateError(f"the chat template cannot render it ({type(exc).__name__}: {first})") from None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _turn_span(
    tokenizer: Any, messages: Sequence[dict[str, str]], k: int, full: str, ends: np.ndarray
) -> tuple[int, int]:
    """Characters [start, end) of `full` that assistant message k renders as (content + end-of-turn)."""
    before = _render(tokenizer, messages[:k], True)
    if not full.startswith(before):
        raise TemplateError(
            f"the chat template renders the conversation before message {k} differently from the whole "
            "conversation, so the assistant's tokens cannot be read off by difference; "
            "mark assistant text with {% generation %} ... {% endgeneration %} in the template"
        )
    through = _render(tokenizer, messages[: k + 1], False)
    if k + 1 < len(messages):
        goes_on = [full]
    else:  # the last turn: a probe user message after it; where the probe changes the turn too, the end
        try:
            goes_on = [_render(tokenizer, [*messages, PROBE], False), through]
        except TemplateError:
            goes_on = [through]
    start, content = len(before), messages[k]["content"].strip()
    for after in goes_on:
        end = _common_prefix(through, after)
        # back to the end of a whole token of `full` (the renderings may share the first characters of the next
        # special token, e.g. "<|" of <|endoftext|> and <|user|>), then drop the whitespace between turns
        whole = ends[ends <= end]
        end = int(whole[-1]) if whole.size else start
        while end > start and full[end - 1].isspace():
            end -= 1
        if end > start and content in full[start:end]:
            return start, end
    raise TemplateError(
        f"the chat template renders assistant message {k} differently once the conversation goes on (or "
        "drops it), so its tokens cannot be read off by difference; "
        "mark assistant text with {% generation %} ... {% endgeneration %} in the template"
    )


def _generation_mask(tokenizer: Any, messages: Sequence[dict[str, str]], learn: Sequence[int]) -> ChatTokens:
    try:
        out = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TemplateError(f"the chat template cannot render it ({type(exc).__name__}: {first})") from None
    ids = np.asarray(out["input_ids"], dtype=np.int64)
    mask = np.asarray(out["assistant_masks"], dtype=bool)
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if list(learn) == assistants:
        return ChatTokens(ids, mask)
    # a subset of the turns: the template's generation blocks, in order, are the assistant messages
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    runs = list(zip(edges[::2], edges[1::2], strict=True))
    if len(runs) != len(assistants):
        raise TemplateError(
            f"the chat template marks {len(runs)} generation block(s) for {len(assistants)} assistant message(s); "
            "cannot tell the turns apart"
        )
    learned = np.zeros_like(mask)
    for k in learn:
        a, b = runs[assistants.index(k)]
        learned[a:b] = True
    return ChatTokens(ids, learned)


def chat_tokens(tokenizer: Any, messages: Sequence[dict[str, str]], learn: Sequence[int] | None) -> ChatTokens:
    """The conversation's tokens, learning the assistant messages at indices `learn` (None: every token)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if learn is not None and GENERATION.search(template):
        return _generation_mask(tokenizer, messages, learn)
    full = _render(tokenizer, messages, False)
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("reading assistant masks needs a fast tokenizer (tokenizer.json), for character offsets")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if learn is None:
        return ChatTokens(ids, np.ones(ids.size, dtype=bool))
    learned = np.zeros(ids.size, dtype=bool)
    for k in learn:
        start, end = _turn_span(tokenizer, messages, k, full, offsets[:, 1])
        learned |= (offsets[:, 1] > start) & (offsets[:, 0] < end)  # the tokens overlapping [start, end)
    return ChatTokens(ids, learned)
