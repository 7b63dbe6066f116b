"""SFT records -> token batches whose loss covers the learned tokens only.

The records and what of each is learned are frontier.finetune.sft_formats' (JSONL or Parquet; messages,
prompt/completion, prompt/response, text; `train_on`); this module turns them into examples and batches.
A prompt/response pair is ``prompt ids + response ids + EOS`` with the prompt masked; a chat rendered by its
template is its tokens with the assistant's (content + the template's end-of-turn token) learned.

Targets are the next tokens, with IGNORE_INDEX wherever the next token is not learned. Batches follow the
trainer's contract (frontier.train.batches.data): samples are a pure function of (seed, global sample index).
Training batches are right-padded micro-batches here (ExampleSampler), or packed windows with finetune.packing
(frontier.finetune.packing.PackedSampler); held-out batches are right-padded either way (eval_batches).
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
from frontier.finetune.chat_masks import ChatTokens
from frontier.finetune.sft_formats import Parts, Record, read_sft_records
from frontier.model.loss import IGNORE_INDEX
from frontier.train.batches.data import Batch, Layout


@dataclass(frozen=True)
class Example:
    input_ids: np.ndarray  # (T,) int64
    targets: np.ndarray  # (T,) int64, IGNORE_INDEX where the next token is not learned


def split_file(sft_dir: Path, split: str) -> Path:
    """The first of `split`.jsonl, `split`.parquet, `split`/ (save_to_disk) in `sft_dir` that exists (else the
    .jsonl, whose absence the reader reports)."""
    jsonl, parquet, folder = (Path(sft_dir) / name for name in (f"{split}.jsonl", f"{split}.parquet", split))
    return next((p for p in (parquet, folder) if p.exists() and not jsonl.is_file()), jsonl)


def read_records(path: Path, tokenizer: Any, train_on: str = "assistant") -> list[Record]:
    """The records of a JSONL or Parquet file (a pair unpacks as (prompt, response)); DataError naming the line
    that is wrong."""
    return read_sft_records(Path(path), tokenizer, train_on)


def _tokens(tokenizer: Any, record: Record) -> tuple[list[int], list[bool]]:
    if isinstance(record, ChatTokens):
        return record.ids.tolist(), record.learned.tolist()
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    learned: list[bool] = []
    for text, learn, close in zip(record, record.learned, record.eos, strict=True):
        part = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        part = part + ([eos] if close and eos is not None else [])
        ids += part
        learned += [learn] * len(part)
    return ids, learned


def encode_record(tokenizer: Any, record: Record, max_len: int) -> Example | None:
    """One example of at most `max_len` positions; None when no learned token survives the cut."""
    ids, learned = _tokens(tokenizer, record)
    ids_a = np.asarray(ids[: max_len + 1], dtype=np.int64)
    keep = np.asarray(learned[: max_len + 1], dtype=bool)
    if ids_a.size < 2 or not keep[1:].any():
        return None
    targets = np.where(keep[1:], ids_a[1:], IGNORE_INDEX)  # position j predicts ids[j + 1]
    return Example(input_ids=ids_a[:-1], targets=targets)


def encode(tokenizer: Any, prompt: str, response: str, max_len: int) -> Example | None:
    """A prompt/response pair: the prompt masked, the response and EOS learned."""
    return encode_record(tokenizer, Parts((prompt, response)), max_len)


def encode_all(tokenizer: Any, records: Sequence[Record], max_len: int, where: Path) -> list[Example]:
    examples = [e for record in records if (e := encode_record(tokenizer, record, max_len))]
    if not examples:
        raise DataError(
            f"{where}: no record has a token to learn within {max_len} tokens (every prompt is longer); "
            "raise finetune.max_seq_len"
        )
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
