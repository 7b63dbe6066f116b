"""Training and validation batches as a pure function of (seed, step, rank).

Windows. A split is cut into windows of ``seq_len + 1`` tokens (inputs = window[:-1], targets =
window[1:]). Without document boundaries (``train.document_aware: false``) windows tile the
token stream at stride seq_len from an offset in [0, seq_len) drawn per epoch, so successive
epochs see different cuts. With ``document_aware: true`` every window starts at a document
start (or seq_len further into a long document) and stops at the document's end; the rest is
padding whose targets are IGNORE_INDEX, so no sample mixes two documents.

Order. Global sample g of the run is window ``perm_e[g mod n]`` of epoch ``e = g div n``, where
perm_e is a permutation drawn from (seed, e). Step s consumes samples [s*B, (s+1)*B) for the
global batch B = micro x accumulation x ranks; rank r's micro-batch m holds the slice starting
at ``(m * world + r) * micro``. The set of samples in a step is the same for every layout of
the same B, which is what makes (micro 4 x accum 1) = (micro 1 x accum 4) = (2 ranks x ...).
Resuming at step s costs O(1): nothing is replayed (one permutation per epoch is drawn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from frontier.data.tokens import TokenShards
from frontier.errors import DataError
from frontier.model.loss import IGNORE_INDEX


@dataclass(frozen=True)
class Layout:
    """How a global batch is split: micro-batches per rank and ranks."""

    micro_batch_size: int
    grad_accum_steps: int
    world_size: int
    rank: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size


@dataclass
class Batch:
    input_ids: torch.Tensor  # (micro, seq_len) int64
    targets: torch.Tensor  # (micro, seq_len) int64, IGNORE_INDEX where padded

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The keyword arguments of CausalLMWithLoss.forward, on `device`."""
        return {"input_ids": self.input_ids.to(device), "targets": self.targets.to(device)}


class WindowSampler:
    """Maps a global sample index to a (inputs, targets) window of one split."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, document_aware: bool) -> None:
        self.shards = shards
        self.seq_len = seq_len
        self.seed = seed
        self.document_aware = document_aware
        self.pad_id = shards.pad_id if shards.pad_id is not None else (shards.eos_id or 0)
        n_tokens = shards.num_tokens
        if document_aware:
            self._starts, self._ends = self._document_windows()
            self.num_windows = int(self._starts.size)
        else:
            self.num_windows = (n_tokens - seq_len) // seq_len  # fits for every offset in [0, seq_len)
        if self.num_windows < 1:
            raise DataError(
                f"{shards.dir}: {n_tokens} tokens are too few for one window of seq_len={seq_len} "
                f"(need at least {2 * seq_len}); lower train.seq_len or add data"
            )
        self._perm = lru_cache(maxsize=2)(self._permutation)

    def _document_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end (exclusive) of every window that stays inside one document."""
        n, seq = self.shards.num_tokens, self.seq_len
        starts = np.unique(np.concatenate(([0], self.shards.doc_starts)))  # (D,)
        ends = np.append(starts[1:], n)  # (D,)
        chunks = np.maximum(0, -(-(ends - starts - 1) // seq))  # windows per document; each >= 1 target
        doc_of = np.repeat(np.arange(starts.size), chunks)  # (W,)
        first = np.cumsum(chunks) - chunks  # index of each document's first window
        within = np.arange(doc_of.size) - first[doc_of]  # (W,)
        w_start = starts[doc_of] + within * seq
        w_end = np.minimum(w_start + seq + 1, ends[doc_of])
        return w_start.astype(np.int64), w_end.astype(np.int64)

    def _permutation(self, epoch: int) -> tuple[int, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        offset = int(rng.integers(0, self.seq_len))
        return offset, rng.permutation(self.num_windows)

    def span(self, index: int) -> tuple[int, int]:
        """[start, end) in the split's token stream of global sample `index` (end - start <= seq_len + 1)."""
        epoch, i = divmod(index, self.num_windows)
        offset, perm = self._perm(epoch)
        w = int(perm[i])
        if self.document_aware:
            return int(self._starts[w]), int(self._ends[w])
        start = offset + w * self.seq_len
        return start, start + self.seq_len + 1

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each (seq_len,) int64, of global sample `index`; padded past a document's end."""
        start, end = self.span(index)
        tokens = self.shards.read(start, end - start)  # (<= seq_len + 1,)
        inputs = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        targets = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        n = tokens.size - 1
        inputs[:n] = tokens[:-1]
        targets[:n] = tokens[1:]
        return inputs, targets

    def batch(self, indices: Sequence[int]) -> Batch:
        pairs = [self.window(g) for g in indices]
        return Batch(
            input_ids=torch.from_numpy(np.stack([p[0] for p in pairs])),  # (micro, seq_len)
            targets=torch.from_numpy(np.stack([p[1] for p in pairs])),  # (micro, seq_len)
        )


class TrainBatches:
    """This rank's micro-batches of a step."""

    def __init__(self, sampler: WindowSampler, layout: Layout) -> None:
        self.sampler = sampler
        self.layout = layout

    def step(self, step: int) -> list[Batch]:
        lay = self.layout
        base = step * lay.global_batch
        out = []
        for m in range(lay.grad_accum_steps):
            first = base + (m * lay.world_size + lay.rank) * lay.micro_batch_size
            out.append(self.sampler.batch(range(first, first + lay.micro_batch_size)))
        return out


def val_batches(sampler: WindowSampler, layout: Layout, eval_batches: int) -> list[Batch]:
    """The fixed validation set: `eval_batches` global batches of windows, this rank's share.

    The set depends only on the global batch size (not on how it is split), and is the same at
    every evaluation, so val losses are comparable across steps and layouts.
    """
    total = eval_batches * layout.global_batch
    mine = list(range(layout.rank, total, layout.world_size))
    size = layout.micro_batch_size
    return [sampler.batch(chunk) for chunk in _chunks(mine, size)]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
