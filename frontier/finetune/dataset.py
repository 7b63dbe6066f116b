"""Prompt/response records -> token batches whose loss covers the response only.

Records are JSONL lines of either ``{"prompt": ..., "response": ...}`` or chat form
``{"messages": [{"role": ..., "content": ...}, ..., {"role": "assistant", "content": ...}]}``;
a chat record's last (assistant) message is the response and the rest, rendered by the
tokenizer's chat template (or a plain "### Role:" template when it has none), the prompt.

An example is ``prompt ids + response ids + EOS``; targets are the next tokens, with
IGNORE_INDEX wherever the next token is still part of the prompt, so only response tokens (and
the closing EOS) are learned and scored. Batches follow the trainer's contract
(frontier.train.batches.data): samples are a pure function of (seed, global sample index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frontier.errors import DataError
from frontier.model.loss import IGNORE_INDEX
from frontier.train.batches.data import Batch, Layout
from frontier.utils.jsonl import iter_jsonl


@dataclass(frozen=True)
class Example:
    input_ids: np.ndarray  # (T,) int64
    targets: np.ndarray  # (T,) int64, IGNORE_INDEX on prompt positions


def _plain_chat(messages: list[dict[str, str]]) -> str:
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


def _record(rec: Any, tokenizer: Any, where: str) -> tuple[str, str]:
    if isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str):
        return rec["prompt"], rec["response"]
    messages = rec.get("messages") if isinstance(rec, dict) else None
    if (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's (it is the response to learn)")
        history = messages[:-1]
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            prompt = _plain_chat(history)
        return prompt, messages[-1]["content"]
    raise DataError(
        f'{where}: expected {{"prompt": str, "response": str}} or '
        '{"messages": [{"role": str, "content": str}, ...]}'
    )


def read_records(path: Path, tokenizer: Any) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a JSONL file; DataError naming the line that is wrong."""
    path = Path(path)
    out = [
        _record(rec, tokenizer, where)
        for where, rec in iter_jsonl(path, "the sft-data stage writes train.jsonl and heldout.jsonl")
    ]
    if not out:
        raise DataError(f"{path}: no records")
    return out


def encode(tokenizer: Any, prompt: str, response: str, max_len: int) -> Example | None:
    """One example of at most `max_len` positions; None when the prompt leaves no room for a response."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    ids = np.asarray(p + r + ([eos] if eos is not None else []), dtype=np.int64)[: max_len + 1]
    if len(p) >= ids.size:  # no response token survives the cut
        return None
    targets = ids[1:].copy()
    targets[: max(len(p) - 1, 0)] = IGNORE_INDEX  # position j predicts ids[j + 1]: a prompt token while j + 1 < len(p)
    return Example(input_ids=ids[:-1], targets=targets)


def encode_all(tokenizer: Any, records: Sequence[tuple[str, str]], max_len: int, where: Path) -> list[Example]:
    examples = [e for prompt, response in records if (e := encode(tokenizer, prompt, response, max_len))]
    if not examples:
        raise DataError(f"{where}: every prompt is longer than {max_len} tokens; raise finetune.max_seq_len")
    return examples


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad to the longest example: (B, T) inputs with pad_id, targets with IGNORE_INDEX."""
    width = max(e.input_ids.size for e in examples)
    inputs = np.full((len(examples), width), pad_id, dtype=np.int64)
    targets = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
    for i, e in enumerate(examples):
        inputs[i, : e.input_ids.size] = e.input_ids
        targets[i, : e.targets.size] = e.targets
    return Batch(input_ids=torch.from_numpy(inputs), targets=torch.from_numpy(targets))


class ExampleSampler:
    """Global sample g -> example ``perm_e[g mod n]`` of epoch ``e = g div n`` (perm_e from (seed, e)).

    The interface of frontier.train.batches.data.WindowSampler that TrainBatches drives.
    """

    def __init__(self, examples: Sequence[Example], seed: int, pad_id: int) -> None:
        self.examples = list(examples)
        self.seed = seed
        self.pad_id = pad_id
        self._perm = lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        return rng.permutation(len(self.examples))

    def batch(self, indices: Sequence[int]) -> Batch:
        n = len(self.examples)
        return collate([self.examples[int(self._perm(g // n)[g % n])] for g in indices], self.pad_id)


def eval_batches(examples: Sequence[Example], layout: Layout, pad_id: int) -> list[Batch]:
    """Every example exactly once, this rank's share; ranks get equal batch counts (an all-masked
    filler example evens them out and adds nothing to the loss or the token count)."""
    world, size = layout.world_size, layout.micro_batch_size
    per_rank = -(-len(examples) // world)
    filler = Example(np.full(1, pad_id, dtype=np.int64), np.full(1, IGNORE_INDEX, dtype=np.int64))
    mine = [examples[i] if i < len(examples) else filler for i in range(layout.rank, per_rank * world, world)]
    return [collate(mine[i : i + size], pad_id) for i in range(0, len(mine), size)]
