"""Checkpoint manifests, retention, and loads that never run pickled code."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from frontier.errors import CheckpointError
from frontier.train.checkpoint import manifest
from frontier.train.checkpoint.checkpoint import CheckpointStore, step_dir_name
from frontier.train.checkpoint.engine_io import weights_only_loads
from frontier.train.launch.distributed import init_distributed
from frontier.train.run import train
from tests.train.helpers import params


def _fake_checkpoint(root, step, val_loss=None, run_id="r1"):
    d = root / step_dir_name(step)
    (d / "ds").mkdir(parents=True)
    (d / "ds" / "blob.bin").write_bytes(os.urandom(64))
    (d / "trainer_state.json").write_text("{}")
    manifest.write_manifest(d, {"step": step, "val_loss": val_loss, "run_id": run_id, "run_params": {}})
    return d


def test_manifest_detects_every_kind_of_damage(tmp_path):
    d = _fake_checkpoint(tmp_path, 1)
    assert manifest.verify(d) is None
    blob = d / "ds" / "blob.bin"
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert "does not match its sha256" in manifest.verify(d)
    blob.write_bytes(bytes(data[:-1]))
    assert "has 63 bytes" in manifest.verify(d)
    blob.unlink()
    assert "ds/blob.bin is missing" in manifest.verify(d)

    d2 = _fake_checkpoint(tmp_path, 2)
    (d2 / "ds" / "stray_model_states.pt").write_bytes(b"x")
    assert "stray_model_states.pt is not listed" in manifest.verify(d2)
    d3 = _fake_checkpoint(tmp_path, 3)
    (d3 / manifest.MANIFEST).write_text("{")
    assert "unreadable" in manifest.verify(d3)
    (d3 / manifest.MANIFEST).unlink()
    assert "manifest.json missing" in manifest.verify(d3)


def test_keep_last_k_plus_best(tmp_path):
    store = CheckpointStore(tmp_path, init_distributed())
    for step, val in [(10, 2.0), (20, 1.5), (30, None), (40, 1.7), (50, None)]:
        _fake_checkpoint(tmp_path, step, val)
    (tmp_path / ".step_00000060.tmp").mkdir()  # an interrupted save: never listed
    (tmp_path / ".step_00000005.deleting").mkdir()  # a run killed while pruning: cleaned up by the next prune
    assert [p.name for p in store.checkpoints()] == [step_dir_name(s) for s in (10, 20, 30, 40, 50)]
    assert store.best("r1") == tmp_path / step_dir_name(20)
    store.prune(keep_last=2, keep_best=True, run_id="r1")
    assert [p.name for p in store.checkpoints()] == [step_dir_name(s) for s in (20, 40, 50)]
    assert not list(tmp_path.glob("*.deleting"))
    store.prune(keep_last=1, keep_best=False, run_id="r1")
    assert [p.name for p in store.checkpoints()] == [step_dir_name(50)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("saved")
    train(params("engine.zero_stage=1"), corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root


def test_every_deepspeed_file_loads_weights_only(saved):
    ckpt = CheckpointStore(saved / "ckpt", init_distributed()).newest_valid()
    files = sorted((ckpt / "ds").rglob("*.pt"))
    assert any("optim_states" in f.name for f in files)  # ZeRO-1 writes the partitioned optimizer state
    with weights_only_loads():
        for f in files:
            assert isinstance(torch.load(f, map_location="cpu", weights_only=True), dict)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickled_payload_is_refused_even_with_a_matching_manifest(tmp_path, saved, monkeypatch, corpus):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved / "ckpt", ckpt)
    newest = CheckpointStore(ckpt, init_distributed()).checkpoints()[-1]
    victim = next((newest / "ds").rglob("*model_states.pt"))
    with weights_only_loads():
        state = torch.load(victim, weights_only=True)
    state["evil"] = _Payload()
    with open(victim, "wb") as f:
        pickle.dump(state, f, protocol=2)  # not even torch's zip format: a bare pickle
    meta = json.loads((newest / manifest.MANIFEST).read_text())
    (newest / manifest.MANIFEST).unlink()
    manifest.write_manifest(newest, {k: v for k, v in meta.items() if k not in ("files", "format")})
    assert manifest.verify(newest) is None  # an attacker who rewrites the manifest too

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="refused to load a file that is not plain tensors/data"):
        train(params("engine.zero_stage=1", "train.max_steps=8", f"train.resume={newest}"), corpus.tokens,
              corpus.tokenizer, tmp_path / "out", ckpt)  # fmt: skip
    assert not (tmp_path / "pwned").exists()


def test_explicit_resume_of_a_corrupt_checkpoint_is_an_error(tmp_path, saved, corpus):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved / "ckpt", ckpt)
    newest = CheckpointStore(ckpt, init_distributed()).checkpoints()[-1]
    (newest / "trainer_state.json").write_text("{}")
    with pytest.raises(
        CheckpointError, match=r"train.resume: .*step_\d+: trainer_state.json has 2 bytes, the manifest says"
    ):
        train(params("engine.zero_stage=1", f"train.resume={newest}"), corpus.tokens, corpus.tokenizer,
              tmp_path / "out", ckpt)  # fmt: skip


def test_resuming_a_different_model_is_a_clear_error(tmp_path, saved, corpus, caplog):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved / "ckpt", ckpt)
    explicit = f"train.resume={ckpt / 'step_00000006'}"
    with pytest.raises(CheckpointError, match=r"written for a different model \(hidden_size=32 there, 48 now\)"):
        train(params("engine.zero_stage=1", "model.hidden_size=48", explicit), corpus.tokens, corpus.tokenizer,
              tmp_path / "out", ckpt)  # fmt: skip
    with caplog.at_level("WARNING", logger="frontier.train"):
        metrics = train(params("engine.zero_stage=1", "model.hidden_size=48", "train.resume=none"), corpus.tokens,
                        corpus.tokenizer, tmp_path / "out", ckpt)  # fmt: skip
    assert metrics["steps"] == 6  # started over
    (archived,) = (ckpt / "archived").iterdir()  # the old run moved aside, not deleted nor pruned against
    said = [r.getMessage() for r in caplog.records if "archived as" in r.getMessage()]
    assert said == [f"resume: none: the checkpoints and logs in {ckpt} are not resumed; archived as {archived}, "
                    "starting fresh"]  # fmt: skip
    assert sorted(p.name for p in archived.iterdir()) == ["logs", "step_00000006"]
    assert [p.name for p in CheckpointStore(ckpt, init_distributed()).checkpoints()] == ["step_00000006"]
    assert manifest.verify(archived / "step_00000006") is None


def test_auto_resume_starts_fresh_when_params_changed(tmp_path, saved, corpus, caplog):
    """A changed params.yaml must retrain, never hand back the old run's model from its final checkpoint."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved / "ckpt", ckpt)
    with caplog.at_level("WARNING", logger="frontier.train"):
        metrics = train(params("engine.zero_stage=1", "optimizer.lr=0.002"), corpus.tokens, corpus.tokenizer,
                        tmp_path / "out", ckpt)  # fmt: skip
    assert metrics["steps"] == 6
    (archived,) = (ckpt / "archived").iterdir()  # the earlier run is kept aside, not resumed
    # In auto's own words: the user never set resume: none (dvc exp run -S optimizer.lr=... under the default).
    said = [r.getMessage() for r in caplog.records if "archived as" in r.getMessage()]
    assert said == [f"resume: auto: the checkpoints and logs in {ckpt} belong to another run (its params differ: "
                    f"optimizer.lr; newest {ckpt / 'step_00000006'}); archived as {archived}, starting fresh"]  # fmt: skip
    assert "resume=none" not in caplog.text and "resume: none" not in caplog.text
    # With the same params, auto resumes the finished run instead of training again.
    caplog.clear()
    with caplog.at_level("INFO", logger="frontier.train"):
        again = train(params("engine.zero_stage=1", "optimizer.lr=0.002"), corpus.tokens, corpus.tokenizer,
                      tmp_path / "out2", ckpt)  # fmt: skip
    assert again["steps"] == 6
    assert "belong to another run" not in caplog.text
    assert "resumed from" in caplog.text
