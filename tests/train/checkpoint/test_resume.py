"""Exact resume on the CPU: interrupted + resumed runs reproduce a straight run bit for bit.

GPT-2 with dropout 0.1, so the restored RNG state matters, not only the weights and the optimizer.
The interrupted runs are real processes stopped by SIGTERM or SIGHUP (graceful: save, exit code 3)
and by SIGKILL (no chance to save: resume from the last periodic checkpoint).
"""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest
import torch

from frontier.train.checkpoint import manifest
from frontier.train.checkpoint.checkpoint import CheckpointStore, step_dir_name
from frontier.train.launch.distributed import init_distributed
from frontier.train.launch.signals import EXIT_INTERRUPTED
from frontier.train.run import train
from tests.train.helpers import (
    launch,
    log_tail,
    losses,
    params,
    read_rows,
    stage,
    stage_log,
    tiny_params,
    wait_for,
    weights,
)

RUN = (
    "model.arch=gpt2",
    "model.dropout=0.1",
    "train.max_steps=40",
    "train.checkpoint.every_steps=10",
    "train.checkpoint.keep_last=3",
    "train.checkpoint.keep_best=false",
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("straight")
    train(params(*RUN), corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root


def _assert_identical(straight_out: Path, resumed_out: Path, resumed_from: int) -> None:
    expected, got = losses(straight_out), losses(resumed_out)
    assert len(expected) == len(got) == 40
    first_diff = next((i + 1 for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    assert first_diff is None, f"step {first_diff} differs (resumed from step {resumed_from}): {expected} != {got}"
    w1, w2 = weights(straight_out), weights(resumed_out)
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def _live_step(ckpt: Path) -> int:
    path = ckpt / "logs" / "train.csv"
    rows = read_rows(path) if path.is_file() else []
    return int(rows[-1]["step"]) if rows else 0


def test_sigterm_then_resume_is_exact(tmp_path, corpus, straight):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    (proc,) = launch(1, tiny_params(*RUN), corpus, out, ckpt)
    wait_for(lambda: _live_step(ckpt) >= 20, proc, lambda: log_tail(out))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED, log_tail(out)
    assert "stopped by SIGTERM" in log_tail(out)
    stopped_at = max(int(p.name.split("_")[1]) for p in ckpt.glob("step_*"))
    assert 20 <= stopped_at < 40
    assert not out.exists()  # an interrupted stage leaves no output for a DAG tool to take as done

    train(params(*RUN), corpus.tokens, corpus.tokenizer, out, ckpt)
    _assert_identical(straight / "out", out, stopped_at)


def test_sighup_on_a_one_rank_stage_checkpoints_like_sigterm(tmp_path, corpus, caplog):
    """A closed SSH session (SIGHUP) on `frontier train` as a user runs it: one rank, in the stage's own
    process. Its default action would kill the run and lose every step since the last checkpoint."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    proc = stage(tiny_params(*RUN), corpus, out, ckpt)
    wait_for(lambda: _live_step(ckpt) >= 12, proc, lambda: stage_log(out))
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED, stage_log(out)[-3000:]
    stopped = re.search(r"stopped by SIGHUP at step (\d+)", stage_log(out))
    assert stopped, stage_log(out)[-3000:]
    stopped_at = int(stopped.group(1))
    assert 12 <= stopped_at < 40
    assert manifest.verify(ckpt / step_dir_name(stopped_at)) is None  # the step it stopped at, not the last 10s
    assert not out.exists()

    # (not compared bit for bit with the straight run: the stage's process runs torch's default thread count)
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        assert train(params(*RUN), corpus.tokens, corpus.tokenizer, out, ckpt)["steps"] == 40
    assert f"resumed from {ckpt / step_dir_name(stopped_at)} at step {stopped_at}" in caplog.text


def test_sigkill_after_checkpoint_then_resume_is_exact(tmp_path, corpus, straight):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    (proc,) = launch(1, tiny_params(*RUN), corpus, out, ckpt)
    wait_for(lambda: (ckpt / "step_00000020" / "manifest.json").is_file(), proc, lambda: log_tail(out))
    proc.kill()  # SIGKILL: no handler runs; maybe mid-way through a later checkpoint
    proc.wait(timeout=60)
    resume_point = CheckpointStore(ckpt, init_distributed()).newest_valid()
    assert resume_point is not None and resume_point.name >= "step_00000020"

    train(params(*RUN), corpus.tokens, corpus.tokenizer, out, ckpt)
    _assert_identical(straight / "out", out, int(resume_point.name.split("_")[1]))


def test_flipped_byte_in_newest_checkpoint_is_detected_and_skipped(tmp_path, corpus, straight, caplog):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(straight / "ckpt", ckpt)
    store = CheckpointStore(ckpt, init_distributed())
    newest = store.checkpoints()[-1]
    assert newest.name == "step_00000040"
    victim = next((newest / "ds").rglob("*model_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="frontier.train"):
        assert store.newest_valid() == ckpt / "step_00000030"
    assert any("step_00000040" in r.message and "sha256" in r.message for r in caplog.records)

    # resuming uses step 30 and recomputes 31..40 exactly
    out = tmp_path / "out"
    train(params(*RUN), corpus.tokens, corpus.tokenizer, out, ckpt)
    _assert_identical(straight / "out", out, 30)
