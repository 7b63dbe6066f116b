"""Checkpoints that cannot be poisoned or lost: finite state only, pruning within the run, one run per directory.

Attacks and accidents, each against the real training loop: NaN weights mid-run, NaN weights at the
end, a stray "newer" checkpoint directory (minimal or copied manifest), a corrupt newest checkpoint,
keep_last=1, and a second run on the same directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from frontier.errors import CheckpointError, TrainingError
from frontier.model.loss import CausalLMWithLoss
from frontier.train.checkpoint import manifest
from frontier.train.checkpoint.checkpoint import CheckpointStore, step_dir_name
from frontier.train.checkpoint.engine_io import weights_only_loads
from frontier.train.launch.distributed import init_distributed
from frontier.train.run import train
from tests.train.helpers import REPO, params


def poison_weights(monkeypatch, bad_calls):
    """At the training forward calls in `bad_calls`, fill a weight with NaN (a blown-up update) in place."""
    original = CausalLMWithLoss.forward
    calls = {"n": 0}

    def forward(self, input_ids, targets):
        if self.training:
            if calls["n"] in bad_calls:
                with torch.no_grad():
                    next(self.parameters()).fill_(float("nan"))
            calls["n"] += 1
        return original(self, input_ids, targets)

    monkeypatch.setattr(CausalLMWithLoss, "forward", forward)


def _all_finite(ckpt) -> bool:
    with weights_only_loads():
        for f in (ckpt / "ds").rglob("*.pt"):
            stack = [torch.load(f, map_location="cpu", weights_only=True)]
            while stack:
                item = stack.pop()
                if torch.is_tensor(item) and item.is_floating_point() and not torch.isfinite(item).all():
                    return False
                if isinstance(item, dict):
                    stack += list(item.values())
                elif isinstance(item, (list, tuple)):
                    stack += list(item)
    return True


def test_a_nan_streak_is_never_checkpointed_and_rollback_lands_on_finite_state(tmp_path, corpus, monkeypatch):
    # NaN weights from the forward of step 5 on, until the rollback replays from step 4 (clean again).
    poison_weights(monkeypatch, {4})
    metrics = train(
        params("train.max_steps=8", "train.checkpoint.every_steps=1", "train.checkpoint.keep_last=8",
               "engine.nan_guard.max_consecutive=2"),
        corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt",
    )  # fmt: skip
    assert metrics["rollbacks"] == 1 and metrics["steps"] == 8
    store = CheckpointStore(tmp_path / "ckpt", init_distributed())
    saved = store.checkpoints()
    assert saved, "checkpoints were written"
    for ckpt in saved:
        assert manifest.read_manifest(ckpt)["finite"] is True
        assert _all_finite(ckpt), f"{ckpt.name} holds NaN/inf"


def test_non_finite_final_weights_are_not_exported(tmp_path, corpus, monkeypatch):
    poison_weights(monkeypatch, {5})  # the last step's forward: the run ends with NaN weights
    with pytest.raises(TrainingError, match=r"final weights hold NaN/inf .* nothing exported"):
        train(params("train.max_steps=6", "engine.nan_guard.max_consecutive=100"), corpus.tokens, corpus.tokenizer,
              tmp_path / "out", tmp_path / "ckpt")  # fmt: skip
    assert not (tmp_path / "out").exists()
    for ckpt in CheckpointStore(tmp_path / "ckpt", init_distributed()).checkpoints():
        assert _all_finite(ckpt)


def _stray(root, step, meta):
    d = root / step_dir_name(step)
    d.mkdir(parents=True)
    (d / manifest.MANIFEST).write_text(json.dumps({"format": manifest.FORMAT, "files": {}, **meta}))
    return d


@pytest.mark.parametrize("keep_last", [1, 2])
def test_stray_newer_directories_neither_prune_nor_hijack_the_run(tmp_path, corpus, keep_last):
    ckpt = tmp_path / "ckpt"
    minimal = _stray(ckpt, 99_999_999, {"step": 99_999_999})
    p = params("train.checkpoint.every_steps=2", f"train.checkpoint.keep_last={keep_last}")
    train(p, corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
    store = CheckpointStore(ckpt, init_distributed())
    names = [c.name for c in store.checkpoints()]
    assert minimal.name in names and not (ckpt / "archived").exists()
    ours = [n for n in names if n != minimal.name]
    assert ours == [step_dir_name(s) for s in (2, 4, 6)[-keep_last:]]
    # a stray that copies the real run's params but lacks the trainer state is still not resumed
    real = json.loads((ckpt / ours[-1] / manifest.MANIFEST).read_text())
    _stray(ckpt, 99_999_998, {"step": 99_999_998, "run_params": real["run_params"], "run_id": real["run_id"]})
    again = train(p, corpus.tokens, corpus.tokenizer, tmp_path / "out2", ckpt)
    assert again["steps"] == 6 and not (ckpt / "archived").exists()  # resumed the real run's end


def test_prune_never_deletes_the_only_valid_checkpoint(tmp_path, corpus):
    ckpt = tmp_path / "ckpt"
    train(params("train.checkpoint.every_steps=3", "train.checkpoint.keep_last=2"), corpus.tokens, corpus.tokenizer,
          tmp_path / "out", ckpt)  # fmt: skip
    store = CheckpointStore(ckpt, init_distributed())
    older, newest = store.checkpoints()
    run_id = manifest.read_manifest(newest)["run_id"]
    state = newest / "trainer_state.json"
    state.write_text(state.read_text() + " ")  # bit rot in the newest
    assert store.prune(keep_last=1, keep_best=False, run_id=run_id) == [newest]  # the corrupt one goes...
    assert store.checkpoints() == [older] and manifest.verify(older) is None  # ...the valid one stays
    (older / "trainer_state.json").write_text("{}")  # now nothing of this run verifies
    assert store.prune(keep_last=1, keep_best=False, run_id=run_id) == []
    assert store.checkpoints() == [older]


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, corpus):
    ckpt = tmp_path / "ckpt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from frontier.train.checkpoint.checkpoint import CheckpointStore; "
         "from frontier.train.launch.distributed import init_distributed; "
         "CheckpointStore(sys.argv[1], init_distributed()).lock(); print('locked', flush=True); time.sleep(60)",
         str(ckpt)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=rf"{ckpt} is in use by pid {holder.pid} on "):
            train(params(), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
        assert not (tmp_path / "out").exists() and CheckpointStore(ckpt, init_distributed()).checkpoints() == []
    finally:
        holder.kill()
        holder.wait()
    assert train(params(), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)["steps"] == 6  # lock released


def test_copied_run_directory_resumes_after_its_lock_holder_died(tmp_path, corpus):
    ckpt = tmp_path / "ckpt"
    train(params("train.max_steps=4"), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
    shutil.copytree(ckpt, tmp_path / "copy")  # .lock is copied too: a stale lock file is no lock
    again = train(params("train.max_steps=6"), corpus.tokens, corpus.tokenizer, tmp_path / "out2", tmp_path / "copy")
    assert again["steps"] == 6
