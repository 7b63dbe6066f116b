"""Batches are a pure function of (seed, step, rank): sharded, layout-invariant, document-aware, O(1) to resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from frontier.data.tokens import TokenShards, write_split
from frontier.errors import DataError
from frontier.model.loss import IGNORE_INDEX
from frontier.train.data import Layout, TrainBatches, WindowSampler, val_batches

SEQ = 16


@pytest.fixture(scope="module")
def shards(corpus) -> TokenShards:
    return TokenShards(corpus.tokens / "train")


def _rows(batches) -> list[tuple[int, ...]]:
    out = []
    for b in batches:
        out += [tuple(r) + tuple(t) for r, t in zip(b.input_ids.tolist(), b.targets.tolist())]
    return out


def _step_rows(shards, doc_aware, micro, accum, world, step, seed=7):
    sampler = WindowSampler(shards, SEQ, seed, doc_aware)
    rows = []
    for rank in range(world):
        rows += _rows(TrainBatches(sampler, Layout(micro, accum, world, rank)).step(step))
    return rows


@pytest.mark.parametrize("doc_aware", [False, True])
def test_global_batch_is_the_same_for_every_layout(shards, doc_aware):
    for step in (0, 3, 57):
        ref = Counter(_step_rows(shards, doc_aware, 4, 1, 1, step))
        assert Counter(_step_rows(shards, doc_aware, 1, 4, 1, step)) == ref
        assert Counter(_step_rows(shards, doc_aware, 1, 2, 2, step)) == ref
        assert Counter(_step_rows(shards, doc_aware, 2, 1, 2, step)) == ref


def test_ranks_get_disjoint_shares_and_steps_differ(shards):
    sampler = WindowSampler(shards, SEQ, 7, False)
    r0 = _rows(TrainBatches(sampler, Layout(2, 1, 2, 0)).step(5))
    r1 = _rows(TrainBatches(sampler, Layout(2, 1, 2, 1)).step(5))
    assert not set(r0) & set(r1)
    assert _rows(TrainBatches(sampler, Layout(2, 1, 2, 0)).step(6)) != r0


def test_deterministic_from_seed_and_step_and_o1_resume(shards):
    """A fresh sampler (a resumed process) jumping straight to a late step builds the same batch, and only
    the permutation of that step's epoch is drawn: nothing is replayed."""
    lay = Layout(4, 1, 1, 0)
    running = TrainBatches(WindowSampler(shards, SEQ, 7, False), lay)
    for step in range(30):
        expected = running.step(step)
    fresh_sampler = WindowSampler(shards, SEQ, 7, False)
    fresh = TrainBatches(fresh_sampler, lay)
    assert _rows(fresh.step(29)) == _rows(expected)
    late = 10**6  # far beyond one epoch
    epoch = late * lay.global_batch // fresh_sampler.num_windows
    fresh.step(late)
    assert fresh_sampler._perm.cache_info().currsize <= 2  # the epoch(s) of that step only
    assert epoch > 100
    assert _rows(TrainBatches(WindowSampler(shards, SEQ, 8, False), lay).step(29)) != _rows(expected)  # seed matters


def test_epoch_covers_every_window_once_and_offsets_change_per_epoch(shards):
    sampler = WindowSampler(shards, SEQ, 7, False)
    n = sampler.num_windows
    for epoch in (0, 1, 5):
        spans = [sampler.span(epoch * n + i) for i in range(n)]
        offset = sampler._perm(epoch)[0]
        assert sorted(s for s, _ in spans) == [offset + k * SEQ for k in range(n)]  # a tiling, each window once
        assert all(e - s == SEQ + 1 and e <= shards.num_tokens for s, e in spans)
    assert len({sampler._perm(e)[0] for e in range(6)}) > 1  # cuts move between epochs
    start, end = sampler.span(3)
    inputs, targets = sampler.window(3)
    stream = shards.read(start, end - start)
    assert np.array_equal(inputs, stream[:-1]) and np.array_equal(targets, stream[1:])


def test_document_aware_windows_never_cross_a_boundary(shards):
    sampler = WindowSampler(shards, SEQ, 7, True)
    doc_of = np.searchsorted(shards.doc_starts, np.arange(shards.num_tokens), side="right") - 1
    stream = shards.read(0, shards.num_tokens)
    padded = 0
    spans = [sampler.span(g) for g in range(sampler.num_windows)]
    assert len(set(spans)) == sampler.num_windows  # one epoch visits every window once
    for g, (start, end) in enumerate(spans):
        assert len(set(doc_of[start:end])) == 1  # one document
        inputs, targets = sampler.window(g)
        n = end - start - 1
        assert np.array_equal(inputs[:n], stream[start : end - 1]) and np.array_equal(
            targets[:n], stream[start + 1 : end]
        )
        assert (targets[n:] == IGNORE_INDEX).all() and (inputs[n:] == shards.pad_id).all()
        padded += n < SEQ
    assert padded > 0
    # every token that has a successor in its document is a target exactly once per epoch
    lens = np.diff(np.append(shards.doc_starts, shards.num_tokens))
    assert sum(end - start - 1 for start, end in spans) == int((lens - 1).sum())


def test_val_set_is_fixed_and_layout_invariant(corpus):
    val = TokenShards(corpus.tokens / "val")
    sampler = WindowSampler(val, SEQ, 8, False)
    one = Counter(_rows(val_batches(sampler, Layout(4, 1, 1, 0), 2)))
    split = Counter(
        _rows(val_batches(sampler, Layout(1, 2, 2, 0), 2)) + _rows(val_batches(sampler, Layout(1, 2, 2, 1), 2))
    )
    assert one == split and sum(one.values()) == 8
    assert len(val_batches(sampler, Layout(1, 2, 2, 0), 2)) == len(val_batches(sampler, Layout(1, 2, 2, 1), 2))


def test_too_little_data_is_a_data_error(tmp_path):
    write_split(tmp_path / "s", [[3, 4, 5, 2]], vocab_size=10, eos_id=2)
    with pytest.raises(DataError, match="too few for one window of seq_len=16"):
        WindowSampler(TokenShards(tmp_path / "s"), SEQ, 0, False)
