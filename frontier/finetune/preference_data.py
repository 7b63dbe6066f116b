"""Preference records -> pairs of token sequences, and the batches of the preference stage.

Records (JSONL, Parquet or a `datasets` save_to_disk folder, as SFT data: frontier.finetune.sft_formats):

  {"prompt": str, "chosen": str, "rejected": str}                 plain text: each completion closed by EOS
  {"prompt": [messages], "chosen": [messages], "rejected": [...]}  conversational (TRL's preference format):
                                                                   the prompt's messages, then each
                                                                   completion's assistant message(s)

A pair is tokenized as TRL's DPOTrainer does: the prompt alone (a chat with the generation prompt), then
prompt + completion as one text (a chat rendered whole by the template); the completion starts where the two
token lists first differ, so a token merged across the boundary is the completion's. A record that is
malformed, or that the template cannot render, is one DataError naming file and line.

A batch of B pairs (PreferenceBatch) holds 2B right-padded rows: the B chosen sequences, then the B rejected
ones; targets are the next tokens, IGNORE_INDEX except on completion tokens, so a row's summed log-probability
of its targets is the completion's log-probability given the prompt. ``num_targets`` counts the PAIRS (the
real ones: an eval filler pair has weight 0): the engine normalises the summed loss by it (a mean over pairs).
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
from frontier.finetune.sft_formats import _check_order, _messages, iter_records
from frontier.model.loss import IGNORE_INDEX
from frontier.train.batches.data import Batch, Layout

KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    """One preference pair: token ids of the prompt and of each completion (int64 arrays); `index`: its place
    in its file (the reference cache's key)."""

    index: int
    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if isinstance(out, dict) or hasattr(out, "keys"):  # a BatchEncoding in newer transformers
        out = out["input_ids"]
    return [int(t) for t in out]


def _completion(value: Any, key: str) -> list[dict[str, str]]:
    msgs = _messages(value, key)
    if any(m["role"] != "assistant" for m in msgs):
        raise ValueError(f"{key}: expected the assistant's message(s) only")
    return msgs


def tokenize_record(rec: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids) of one record; ValueError naming the key that is wrong."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object with {', '.join(KEYS)}, got {type(rec).__name__}")
    missing = [k for k in KEYS if rec.get(k) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; expected keys {', '.join(KEYS)} (found {sorted(rec)})")
    prompt, chosen, rejected = (rec[k] for k in KEYS)
    if all(isinstance(v, str) for v in (prompt, chosen, rejected)):
        if not prompt:
            raise ValueError("prompt: empty; a pair's completions are scored given a prompt")
        eos = tokenizer.eos_token or ""
        p = _ids(tokenizer, prompt)
        full = [_ids(tokenizer, prompt + c + ("" if c.endswith(eos) else eos)) for c in (chosen, rejected)]
    elif all(isinstance(v, list) for v in (prompt, chosen, rejected)):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("message lists need a tokenizer with a chat template; this one has none")
        head = _messages(prompt, "prompt")
        tails = [_completion(chosen, "chosen"), _completion(rejected, "rejected")]
        for tail in tails:
            _check_order(head + tail)
        p = _chat_ids(tokenizer, head, generation_prompt=True)
        full = [_chat_ids(tokenizer, head + tail, generation_prompt=False) for tail in tails]
    else:
        kinds = ", ".join(type(v).__name__ for v in (prompt, chosen, rejected))
        raise ValueError(f"prompt, chosen, rejected: expected three strings or three message lists, got {kinds}")
    cut = min(common_prefix(p, full[0]), common_prefix(p, full[1]))
    c, r = full[0][cut:], full[1][cut:]
    if not c or not r:
        raise ValueError("an empty completion: chosen and rejected need at least one token each")
    return p[:cut], c, r


def read_pairs(path: Path, tokenizer: Any, max_len: int) -> list[Pair]:
    """Every pair of `path`, each sequence cut to `max_len` + 1 tokens (the completion's end is dropped: TRL's
    keep_start); a pair whose prompt fills the window is left out. DataError naming file:line."""
    import jinja2

    from frontier.finetune.chat_masks import TemplateError

    if not Path(path).exists():
        raise DataError(
            f"{path}: not found (preference data: train.jsonl and heldout.jsonl of {'/'.join(KEYS)} records)"
        )
    out: list[Pair] = []
    for i, (where, rec) in enumerate(iter_records(Path(path))):
        try:
            p, c, r = tokenize_record(rec, tokenizer)
        except (ValueError, TemplateError) as exc:
            raise DataError(f"{where}: {exc}") from None
        except jinja2.TemplateError as exc:  # the template's own refusal (raise_exception) or a broken template
            raise DataError(f"{where}: the chat template cannot render this record ({exc})") from None
        room = max_len + 1 - len(p)
        if room < 2:
            continue
        as_array = lambda ids: np.asarray(ids, dtype=np.int64)  # noqa: E731
        out.append(Pair(i, as_array(p), as_array(c[:room]), as_array(r[:room])))
    if not out:
        raise DataError(f"{path}: no pair fits in {max_len} tokens (or the file is empty); raise max_seq_len")
    return out


@dataclass
class PreferenceBatch(Batch):
    """2B rows (chosen then rejected) of B pairs. `weight` (B,): 1 for a real pair, 0 for a filler;
    `ref_logps` (2B,) float64: the reference's log-probabilities of each row's completion (DPO; None: ORPO)."""

    weight: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    @property
    def num_targets(self) -> int:
        return int(self.weight.sum()) if self.weight is not None else self.input_ids.shape[0] // 2

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids.to(device), "targets": self.targets.to(device)}
        if self.weight is not None:
            inputs["weight"] = self.weight.to(device)
        if self.ref_logps is not None:
            inputs["ref_logps"] = self.ref_logps.to(device)
        return inputs


def collate_pairs(
    pairs: Sequence[Pair], pad_id: int, ref: dict[int, tuple[float, float]] | None = None,
    weights: Sequence[float] | None = None,
) -> PreferenceBatch:  # fmt: skip
    """Rows: chosen of every pair, then rejected; right-padded (inputs pad_id, targets IGNORE_INDEX)."""
    seqs = [np.concatenate((p.prompt, p.chosen)) for p in pairs] + [
        np.concatenate((p.prompt, p.rejected)) for p in pairs
    ]
    starts = [p.prompt.size for p in pairs] * 2  # the first completion token's position
    width = max(s.size for s in seqs) - 1
    inputs = np.full((len(seqs), width), pad_id, dtype=np.int64)
    targets = np.full((len(seqs), width), IGNORE_INDEX, dtype=np.int64)
    for row, (s, start) in enumerate(zip(seqs, starts)):
        inputs[row, : s.size - 1] = s[:-1]
        # position j predicts s[j + 1]; a prompt whose tokens all merged into the completion's first token leaves
        # that token nothing to be predicted from: the completion is scored from its second token
        first = max(start, 1)
        targets[row, first - 1 : s.size - 1] = s[first:]
    weight = torch.tensor(list(weights) if weights is not None else [1.0] * len(pairs), dtype=torch.float32)
    ref_logps = None
    if ref is not None:
        values = [ref[p.index][0] for p in pairs] + [ref[p.index][1] for p in pairs]
        ref_logps = torch.tensor(values, dtype=torch.float64)
    return PreferenceBatch(torch.from_numpy(inputs), torch.from_numpy(targets), weight=weight, ref_logps=ref_logps)


class PairSampler:
    """Global sample g -> pair ``perm_e[g mod n]`` of epoch ``e = g div n`` (as frontier.finetune.dataset's
    ExampleSampler): the sampler TrainBatches drives."""

    def __init__(self, pairs: Sequence[Pair], seed: int, pad_id: int, ref: dict[int, tuple[float, float]] | None):
        self.pairs = list(pairs)
        self.seed = seed
        self.pad_id = pad_id
        self.ref = ref
        self._perm = lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        return rng.permutation(len(self.pairs))

    def batch(self, indices: Sequence[int]) -> PreferenceBatch:
        n = len(self.pairs)
        return collate_pairs([self.pairs[int(self._perm(g // n)[g % n])] for g in indices], self.pad_id, self.ref)


def pair_eval_batches(
    pairs: Sequence[Pair], layout: Layout, pad_id: int, ref: dict[int, tuple[float, float]] | None
) -> list[PreferenceBatch]:
    """Every pair exactly once, this rank's share; equal batch counts on every rank (a filler pair of weight 0
    evens them out)."""
    world, size = layout.world_size, layout.micro_batch_size
    per_rank = -(-len(pairs) // world)
    idx = list(range(layout.rank, per_rank * world, world))
    out = []
    for k in range(0, len(idx), size):
        chunk = idx[k : k + size]
        mine = [pairs[i] if i < len(pairs) else pairs[0] for i in chunk]
        weights = [1.0 if i < len(pairs) else 0.0 for i in chunk]
        out.append(collate_pairs(mine, pad_id, ref, weights))
    return out
