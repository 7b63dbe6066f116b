"""The batch prefetcher: the same batches as building them in the loop, in any order of asking, and a
thread that never outlives its run (normal end, exception, stop signal)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from frontier.data.tokens import TokenShards
from frontier.errors import DataError
from frontier.train.batches.data import Layout, TrainBatches, WindowSampler
from frontier.train.batches.prefetch import Prefetcher, load_step
from frontier.train.launch.signals import TrainingInterrupted
from frontier.train.run import train
from tests.train.helpers import params


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "frontier-prefetch"]


@pytest.fixture
def batches(corpus) -> TrainBatches:
    sampler = WindowSampler(TokenShards(corpus.tokens / "train"), 16, 7, True)
    return TrainBatches(sampler, Layout(2, 2, 1, 0))


def _same(a, b) -> bool:
    return a.targets == b.targets and all(
        torch.equal(x.input_ids, y.input_ids) and torch.equal(x.targets, y.targets)
        for x, y in zip(a.batches, b.batches)
    )


def test_prefetched_batches_are_the_loops_own_in_any_order(batches):
    cpu = torch.device("cpu")
    expected = {s: load_step(batches.step, s, cpu) for s in range(12)}
    # in order, then a rollback (rewind), a resume far ahead, and a step asked twice
    order = [0, 1, 2, 3, 4, 2, 3, 9, 10, 10, 11, 0]
    with Prefetcher(batches.step, cpu, end=12) as pre:
        for s in order:
            got = pre.get(s)
            assert _same(got, expected[s]), f"step {s}"
            assert got.targets == sum(b.num_targets for b in batches.step(s))
        assert pre.running or s == 11
    assert not _threads()


def test_steps_past_the_end_are_built_in_the_callers_thread(batches):
    cpu = torch.device("cpu")
    with Prefetcher(batches.step, cpu, end=2) as pre:
        assert _same(pre.get(5), load_step(batches.step, 5, cpu))
        assert not pre.running  # nothing was started for it
    assert not _threads()


def test_an_error_while_building_reaches_the_loop_and_ends_the_thread(batches):
    def make(step: int):
        if step == 2:
            raise DataError("shard 3 is unreadable")
        return batches.step(step)

    with Prefetcher(make, torch.device("cpu"), end=10) as pre:
        pre.get(0)
        pre.get(1)
        with pytest.raises(DataError, match="shard 3"):
            pre.get(2)
        time.sleep(0.1)
        assert not pre.running
        assert _same(pre.get(3), load_step(batches.step, 3, torch.device("cpu")))  # a later ask restarts it
    assert not _threads()


def test_close_does_not_wait_for_more_than_the_batch_in_hand(batches):
    started = threading.Event()

    def slow(step: int):
        started.set()
        time.sleep(0.3)
        return batches.step(step)

    pre = Prefetcher(slow, torch.device("cpu"), end=1000, depth=2)
    pre.get(0)
    started.wait(5)
    t0 = time.monotonic()
    pre.close()
    assert time.monotonic() - t0 < 2.0 and not _threads()
    pre.close()  # twice is harmless


def test_an_exception_in_the_loop_leaves_no_thread(corpus, tmp_path, monkeypatch):
    original = TrainBatches.step

    def failing(self, step):
        if step == 3:
            raise DataError("tokens changed under the run")
        return original(self, step)

    monkeypatch.setattr(TrainBatches, "step", failing)
    with pytest.raises(DataError, match="changed under the run"):
        train(params("train.max_steps=6"), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    assert not _threads()


def test_a_stop_signal_ends_the_run_and_the_thread(corpus, tmp_path, monkeypatch):
    """SIGINT while the thread is building batches: the run checkpoints and stops as before, no thread left."""
    original = TrainBatches.step

    def interrupting(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread's StopRequest handler
        return original(self, step)

    monkeypatch.setattr(TrainBatches, "step", interrupting)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT"):
        train(params("train.max_steps=50"), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    assert not _threads()
    assert list((tmp_path / "ckpt").glob("step_*"))  # the stop still saved a checkpoint
