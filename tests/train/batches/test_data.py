"""Batches are a pure function of (seed, step, rank): sharded, layout-invariant, O(1) to resume, packed or not.

What a packed window holds (documents, positions, masked targets) is tested in test_packing.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from frontier.data.tokens import TokenShards, write_split
from frontier.errors import DataError
from frontier.train.batches.data import Layout, TrainBatches, WindowSampler, val_batches

SEQ = 16


@pytest.fixture(scope="module")
def shards(corpus) -> TokenShards:
    return TokenShards(corpus.tokens / "train")


def _rows(batches) -> list[tuple[int, ...]]:
    """One tuple per sample: inputs, targets and (packed) positions."""
    out = []
    for b in batches:
        positions = b.position_ids.tolist() if b.position_ids is not None else [[]] * len(b.input_ids)
        out += [tuple(r) + tuple(t) + tuple(p) for r, t, p in zip(b.input_ids.tolist(), b.targets.tolist(), positions)]
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


@pytest.mark.parametrize("doc_aware", [False, True])
def test_deterministic_from_seed_and_step_and_o1_resume(shards, doc_aware):
    """A fresh sampler (a resumed process) jumping straight to a late step builds the same batch, and only
    the permutation of that step's epoch is drawn: nothing is replayed."""
    lay = Layout(4, 1, 1, 0)
    running = TrainBatches(WindowSampler(shards, SEQ, 7, doc_aware), lay)
    for step in range(30):
        expected = running.step(step)
    fresh_sampler = WindowSampler(shards, SEQ, 7, doc_aware)
    fresh = TrainBatches(fresh_sampler, lay)
    assert _rows(fresh.step(29)) == _rows(expected)
    late = 10**6  # far beyond one epoch
    epoch = late * lay.global_batch // fresh_sampler.num_windows
    fresh.step(late)
    assert fresh_sampler._perm.cache_info().currsize <= 2  # the epoch(s) of that step only
    assert epoch > 100
    reseeded = TrainBatches(WindowSampler(shards, SEQ, 8, doc_aware), lay)
    assert _rows(reseeded.step(29)) != _rows(expected)  # seed matters


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


def test_model_inputs_carry_positions_only_when_packed(shards):
    plain = WindowSampler(shards, SEQ, 7, False).batch([0, 1])
    packed = WindowSampler(shards, SEQ, 7, True).batch([0, 1])
    cpu = torch.device("cpu")
    assert plain.position_ids is None and set(plain.model_inputs(cpu)) == {"input_ids", "targets"}
    inputs = packed.model_inputs(cpu)
    assert set(inputs) == {"input_ids", "targets", "position_ids", "doc_ids"}
    assert inputs["position_ids"].shape == (2, SEQ) and inputs["position_ids"].dtype == torch.int64
    assert torch.equal(inputs["position_ids"], packed.position_ids)


@pytest.mark.parametrize("doc_aware", [False, True])
def test_val_set_is_fixed_and_layout_invariant(corpus, doc_aware):
    val = TokenShards(corpus.tokens / "val")
    sampler = WindowSampler(val, SEQ, 8, doc_aware)
    one = Counter(_rows(val_batches(sampler, Layout(4, 1, 1, 0), 2)))
    split = Counter(
        _rows(val_batches(sampler, Layout(1, 2, 2, 0), 2)) + _rows(val_batches(sampler, Layout(1, 2, 2, 1), 2))
    )
    assert one == split and sum(one.values()) == 8
    assert len(val_batches(sampler, Layout(1, 2, 2, 0), 2)) == len(val_batches(sampler, Layout(1, 2, 2, 1), 2))


@pytest.mark.parametrize("doc_aware", [False, True])
def test_a_corrupted_shard_stops_the_sampler_with_one_data_error_naming_it(tmp_path, doc_aware):
    write_split(tmp_path / "s", [list(range(3, 60))] * 6, vocab_size=64, eos_id=2, shard_tokens=100)
    WindowSampler(TokenShards(tmp_path / "s"), SEQ, 0, doc_aware)  # intact: builds
    path = tmp_path / "s" / "shard_00002.bin"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size, one bit: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard_00002\.bin: sha256 .* does not match meta\.json"):
        WindowSampler(TokenShards(tmp_path / "s"), SEQ, 0, doc_aware)


def test_too_little_data_is_a_data_error(tmp_path):
    write_split(tmp_path / "s", [[3, 4, 5, 2]], vocab_size=10, eos_id=2)
    with pytest.raises(DataError, match="too few for one window of seq_len=16"):
        WindowSampler(TokenShards(tmp_path / "s"), SEQ, 0, False)
