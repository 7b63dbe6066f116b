"""Packed SFT (finetune.packing: true): examples packed into windows, each kept to itself.

Packing. An epoch's examples are packed first-fit decreasing into windows of ``window`` positions (the
finetune window: finetune.max_seq_len, else the model's context): longest first, ties in the order of the
epoch's permutation (the one frontier.finetune.dataset.ExampleSampler draws from (seed, epoch)), each into the
first window with room for it. The windows are then shuffled by the same generator. Since first-fit
decreasing sees only the sorted lengths, every epoch packs into the same number of windows; only which of
equally long examples land where, and the order of the windows, change from epoch to epoch.

A window is one row of the batch, as the pre-training packing path builds it
(frontier.train.batches.data, ``train.document_aware``): its examples side by side, ``position_ids``
restarting at 0 at each example and ``doc_ids`` numbering them from 0; the tail is padding (inputs pad_id,
targets IGNORE_INDEX, positions from 0, one more document of its own). Each example keeps its own targets
(IGNORE_INDEX at its prompt tokens), and its last target is its own last token, so no token is predicted
from another example: with the attention masked to each document (frontier.model.attention), a window's
summed loss is the sum of its examples' losses, each run alone.

Order. Global sample g is window g mod n of epoch g div n (n windows per epoch): a pure function of (seed,
g), the trainer's exact-resume contract (frontier.train.batches.data.TrainBatches); resuming costs one
packing of the current epoch.

Padding. :func:`padded_real_fraction` and :func:`packed_real_fraction` are the share of real (non-padding)
input positions of right-padded micro-batches and of packed windows: what the stage logs and writes as
``padding_fraction_unpacked`` / ``padding_fraction_packed`` (one minus these).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from frontier.model.loss import IGNORE_INDEX
from frontier.train.batches.data import Batch, Window

if TYPE_CHECKING:
    from frontier.finetune.dataset import Example


def epoch_permutation(seed: int, epoch: int, n: int) -> tuple[np.random.Generator, np.ndarray]:
    """The generator of (seed, epoch) and the permutation of n examples it draws first (ExampleSampler's)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return rng, rng.permutation(n)


def first_fit_decreasing(lengths: np.ndarray, order: np.ndarray, window: int) -> list[list[int]]:
    """Example indices per window: longest first (ties in `order`), each into the first window with room.

    lengths (n,) int, each in [1, window]; order (n,) a permutation of range(n)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > window):
        raise ValueError(f"packing: example lengths must be in [1, {window}], got {lengths.min()}..{lengths.max()}")
    order = np.asarray(order, dtype=np.int64)
    ranked = order[np.argsort(-lengths[order], kind="stable")]  # (n,) longest first, ties in `order`
    free = np.empty(len(ranked), dtype=np.int64)  # room left in each window opened so far
    bins: list[list[int]] = []
    for i in ranked.tolist():
        size = int(lengths[i])
        fits = np.flatnonzero(free[: len(bins)] >= size)
        if fits.size:
            j = int(fits[0])
        else:
            j = len(bins)
            bins.append([])
            free[j] = window
        bins[j].append(i)
        free[j] -= size
    return bins


class PackedSampler:
    """Global sample g -> packed window g mod n of epoch g div n (see the module docstring).

    The interface of frontier.train.batches.data.WindowSampler that TrainBatches drives."""

    def __init__(self, examples: Sequence[Example], window: int, seed: int, pad_id: int) -> None:
        if not examples:
            raise ValueError("packing: no examples to pack")
        self.examples = list(examples)
        self.window = window
        self.seed = seed
        self.pad_id = pad_id
        self.lengths = np.asarray([e.input_ids.size for e in self.examples], dtype=np.int64)  # (n,)
        self._packing = lru_cache(maxsize=2)(self._pack)
        self.num_windows = len(self._packing(0))

    def _pack(self, epoch: int) -> list[list[int]]:
        rng, perm = epoch_permutation(self.seed, epoch, len(self.examples))
        bins = first_fit_decreasing(self.lengths, perm, self.window)
        return [bins[i] for i in rng.permutation(len(bins))]

    def windows(self, epoch: int) -> list[list[int]]:
        """The example indices of each window of `epoch`, in sample order."""
        return self._packing(epoch)

    def sample(self, index: int) -> Window:
        epoch, i = divmod(index, self.num_windows)
        members = self._packing(epoch)[i]
        inputs = np.full(self.window, self.pad_id, dtype=np.int64)
        targets = np.full(self.window, IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros(self.window, dtype=np.int64)
        documents = np.zeros(self.window, dtype=np.int64)
        at = 0
        for k, m in enumerate(members):
            e = self.examples[m]
            n = e.input_ids.size
            inputs[at : at + n], targets[at : at + n] = e.input_ids, e.targets
            positions[at : at + n] = np.arange(n)
            documents[at : at + n] = k
            at += n
        positions[at:] = np.arange(self.window - at)  # the padding: one more sequence of its own
        documents[at:] = len(members)
        return Window(inputs, targets, positions, documents)

    def batch(self, indices: Sequence[int]) -> Batch:
        samples = [self.sample(int(g)) for g in indices]
        return Batch(
            input_ids=torch.from_numpy(np.stack([s.inputs for s in samples])),  # (micro, window)
            targets=torch.from_numpy(np.stack([s.targets for s in samples])),  # (micro, window)
            position_ids=torch.from_numpy(np.stack([s.positions for s in samples])),  # (micro, window)
            doc_ids=torch.from_numpy(np.stack([s.documents for s in samples])),  # (micro, window)
        )


def padded_real_fraction(examples: Sequence[Example], seed: int, micro_batch_size: int) -> float:
    """Real input positions / all positions of one epoch of right-padded micro-batches (ExampleSampler's
    epoch-0 order in micro-batches of `micro_batch_size`, each padded to its longest example)."""
    lengths = np.asarray([e.input_ids.size for e in examples], dtype=np.int64)
    _, perm = epoch_permutation(seed, 0, len(lengths))
    ordered = lengths[perm]
    padded = sum(int(ordered[i : i + micro_batch_size].max()) * len(ordered[i : i + micro_batch_size])
                 for i in range(0, len(ordered), micro_batch_size))  # fmt: skip
    return int(lengths.sum()) / padded


def packed_real_fraction(sampler: PackedSampler) -> float:
    """Real input positions / all positions of one epoch of packed windows."""
    return int(sampler.lengths.sum()) / (sampler.num_windows * sampler.window)


def check_document_masking(lm: Any) -> None:
    """ConfigError unless `lm`'s attention keeps packed examples apart (frontier.model.attention.document_inputs:
    a frontier attention takes ``doc_ids``; another gets a block-causal mask from its own mask builder; one that
    cannot express documents, flash attention's 2D padding mask, is refused here rather than attending across
    examples)."""
    from frontier.errors import ConfigError
    from frontier.model.attention import document_inputs

    try:
        document_inputs(lm, torch.zeros((1, 2), dtype=torch.int64))
    except ValueError as e:
        raise ConfigError(f"finetune.packing: {e}; or set finetune.packing: false") from None
