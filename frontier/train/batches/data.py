"""Training and validation batches as a pure function of (seed, step, rank).

Windows. A split is one token stream cut into windows of ``seq_len + 1`` tokens (inputs =
window[:-1], targets = window[1:]) at stride seq_len from an offset in [0, seq_len) drawn per
epoch, so successive epochs see different cuts.

* ``train.document_aware: false``: the windows tile the stream from the offset; a window may hold
  the end of one document and the start of the next, attended to as one sequence.
* ``train.document_aware: true`` (packing): the stream is read as a ring that starts at the
  offset, so one epoch's windows hold every token exactly once as an input, several consecutive
  documents per window, a long document continuing into the next windows. ``position_ids``
  restart at 0 at every document start (and at the window's start, where a continued document
  resumes with no context from the previous window), and ``doc_ids`` number the documents of the
  window from 0 (the same restarts): the batch hands them to the model, which masks attention
  across documents with them (frontier.model.attention). The target of a document's
  last token (the next document's first) is IGNORE_INDEX, so no token is predicted from another
  document: a packed window's summed loss is the sum of its pieces' losses, each run alone from
  position 0. Padding (inputs pad_id, targets IGNORE_INDEX, positions restarting at 0) fills
  only the tail of an epoch's last window: at most seq_len - 1 tokens per epoch.

Order. Global sample g of the run is window ``perm_e[g mod n]`` of epoch ``e = g div n``, where
perm_e is a permutation drawn from (seed, e). Step s consumes samples [s*B, (s+1)*B) for the
global batch B = micro x accumulation x ranks; rank r's micro-batch m holds the slice starting
at ``(m * world + r) * micro``. The set of samples in a step is the same for every layout of
the same B, which is what makes (micro 4 x accum 1) = (micro 1 x accum 4) = (2 ranks x ...).
Resuming at step s costs O(1): nothing is replayed (one permutation per epoch is drawn).

Validation. The val split goes through the same sampler (its own seed) with the same
document_aware setting, so a val loss is the same per-token quantity as the training loss
(packed and document-masked, or not). The val set is the first ``eval_batches x B`` samples of
that order: fixed for the run, the same for every layout of B (see val_batches).

Integrity. A sampler recomputes its split's shard checksums when it is built (TokenShards.verify),
so a shard corrupted since the tokenize stage ends the run before the first step with one
DataError naming the file.
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
    targets: torch.Tensor  # (micro, seq_len) int64, IGNORE_INDEX where padded or at a document's end
    position_ids: torch.Tensor | None = None  # (micro, seq_len) int64, restarting per document; None: unpacked
    # (micro, seq_len) int64, the document of each token (non-decreasing along a row); None: unpacked
    doc_ids: torch.Tensor | None = None

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The keyword arguments of CausalLMWithLoss.forward, on `device`."""
        inputs = {"input_ids": self.input_ids.to(device), "targets": self.targets.to(device)}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids.to(device)
        if self.doc_ids is not None:
            inputs["doc_ids"] = self.doc_ids.to(device)
        return inputs


@dataclass
class Window:
    """One sample: inputs and targets (seq_len,) int64, and positions and documents (seq_len,) when packed."""

    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray | None
    documents: np.ndarray | None = None  # the document index of each token, from 0


class WindowSampler:
    """Maps a global sample index to a window of one split (see the module docstring)."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, document_aware: bool) -> None:
        shards.verify()  # what this run trains on is what the tokenize stage wrote
        self.shards = shards
        self.seq_len = seq_len
        self.seed = seed
        self.document_aware = document_aware
        self.pad_id = shards.pad_id if shards.pad_id is not None else (shards.eos_id or 0)
        n_tokens = shards.num_tokens
        if document_aware:
            # every document start in [0, n), the stream's start included (empty documents collapse)
            starts = shards.doc_starts
            self._doc_starts = np.unique(np.concatenate(([0], starts[starts < n_tokens]))).astype(np.int64)
            self.num_windows = -(-n_tokens // seq_len) if n_tokens > seq_len else 0  # ceil: the ring's inputs
            need = seq_len + 1
        else:
            self.num_windows = (n_tokens - seq_len) // seq_len  # fits for every offset in [0, seq_len)
            need = 2 * seq_len
        if self.num_windows < 1:
            raise DataError(
                f"{shards.dir}: {n_tokens} tokens are too few for one window of seq_len={seq_len} "
                f"(need at least {need}); lower train.seq_len or add data"
            )
        self._perm = lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> tuple[int, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        offset = int(rng.integers(0, self.seq_len))
        return offset, rng.permutation(self.num_windows)

    def cut(self, index: int) -> tuple[int, int]:
        """(start, length) of global sample `index` in the split's stream, length <= seq_len + 1.

        Unpacked, [start, start + length) lies inside the stream. Packed, it is read on the ring:
        token ``(start + j) mod num_tokens`` for j < length (only an epoch's last window wraps).
        """
        epoch, i = divmod(index, self.num_windows)
        offset, perm = self._perm(epoch)
        w = int(perm[i])
        if not self.document_aware:
            return offset + w * self.seq_len, self.seq_len + 1
        n = self.shards.num_tokens
        # inputs are ring tokens [w*seq, min((w+1)*seq, n)); the last one's target is the next ring token
        return (offset + w * self.seq_len) % n, min(self.seq_len, n - w * self.seq_len) + 1

    def span(self, index: int) -> tuple[int, int]:
        """[start, end) in the stream of an unpacked sample `index` (end - start = seq_len + 1)."""
        if self.document_aware:
            raise ValueError("span() is for unpacked windows; a packed window is a ring cut, see cut()")
        start, length = self.cut(index)
        return start, start + length

    def _read_ring(self, start: int, length: int) -> np.ndarray:
        n = self.shards.num_tokens
        head = min(length, n - start)
        if head == length:
            return self.shards.read(start, length)
        return np.concatenate((self.shards.read(start, head), self.shards.read(0, length - head)))  # (length,)

    def sample(self, index: int) -> Window:
        """Window of global sample `index`; packed windows carry positions and mask cross-document targets."""
        start, length = self.cut(index)
        inputs = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        targets = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        n = length - 1  # real inputs; the rest is padding
        if not self.document_aware:
            tokens = self.shards.read(start, length)  # (seq_len + 1,)
            inputs[:n], targets[:n] = tokens[:-1], tokens[1:]
            return Window(inputs, targets, None)
        tokens = self._read_ring(start, length)  # (length,)
        first = self.is_doc_start((start + np.arange(length)) % self.shards.num_tokens)  # (length,)
        inputs[:n] = tokens[:-1]
        targets[:n] = np.where(first[1:], IGNORE_INDEX, tokens[1:])  # never predict another document's token
        restart = np.zeros(self.seq_len, dtype=bool)
        restart[:n] = first[:-1]
        restart[0] = True  # a continued document starts over: the previous window's tokens are not visible
        restart[n:] = np.arange(n, self.seq_len) == n  # the padding is one more sequence of its own
        at = np.arange(self.seq_len)
        positions = at - np.maximum.accumulate(np.where(restart, at, 0))  # (seq_len,) offset from last restart
        documents = np.cumsum(restart, dtype=np.int64) - 1  # (seq_len,) restarts so far: 0 from the window's start
        return Window(inputs, targets, positions, documents)

    def is_doc_start(self, stream_index: np.ndarray) -> np.ndarray:
        """Bool mask, same shape: which stream indices (in [0, num_tokens)) start a document (packed only)."""
        at = np.searchsorted(self._doc_starts, stream_index)
        return self._doc_starts[np.minimum(at, self._doc_starts.size - 1)] == stream_index

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each (seq_len,) int64, of global sample `index`."""
        w = self.sample(index)
        return w.inputs, w.targets

    def batch(self, indices: Sequence[int]) -> Batch:
        samples = [self.sample(g) for g in indices]
        positions = documents = None
        if self.document_aware:
            positions = torch.from_numpy(np.stack([s.positions for s in samples]))  # (micro, seq_len)
            documents = torch.from_numpy(np.stack([s.documents for s in samples]))  # (micro, seq_len)
        return Batch(
            input_ids=torch.from_numpy(np.stack([s.inputs for s in samples])),  # (micro, seq_len)
            targets=torch.from_numpy(np.stack([s.targets for s in samples])),  # (micro, seq_len)
            position_ids=positions,
            doc_ids=documents,
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


def local_targets(batches: list[Batch]) -> int:
    """Non-masked tokens of this rank's micro-batches (host tensors: no device sync)."""
    return sum(b.num_targets for b in batches)
