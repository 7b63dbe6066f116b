"""The preference stage through the one training wiring: a LoRA DPO run lowers the loss on its pairs, a resume from
a mid-run checkpoint is exact, DPO's reference log-probs are computed once and reused from their cache (a
tampered cache is recomputed, never used), ORPO runs without a reference, and the outputs hold the rewards."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest

import frontier.finetune.preference as stage
from frontier.config import load_params
from frontier.finetune.preference import CACHE_FILE, preference, read_cache
from tests.eval.tiny import TRAIN_OVERRIDES
from tests.finetune.test_preference_trl import PAIRS
from tests.model.families import build_checkpoint
from tests.train.helpers import losses

LORA = (
    *TRAIN_OVERRIDES,
    "preference.method=lora",
    "preference.r=4",
    "preference.alpha=8",
    "preference.lr=3e-2",
    "preference.beta=0.5",
    "preference.max_steps=4",
    "preference.micro_batch_size=3",
    "preference.grad_accum_steps=2",  # a step: every pair, in two micro-batches
    "preference.log_every=1",
    "preference.eval_every=2",
    "preference.checkpoint_every=2",
    "schedule.kind=constant",
)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A LoRA DPO run of 4 steps with a checkpoint every 2, counting the reference passes."""
    root = tmp_path_factory.mktemp("pref")
    base = build_checkpoint("qwen2", root / "base")
    data = root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    (data / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:3]))
    params = load_params(None, list(LORA))
    calls = []
    real = stage.compute_reference
    stage.compute_reference = lambda *a, **k: calls.append(len(a[1])) or real(*a, **k)
    try:
        metrics = preference(params, base, data, root / "out", root / "ckpt")
    finally:
        stage.compute_reference = real
    return {"root": root, "base": base, "data": data, "params": params, "metrics": metrics, "calls": calls}


def rerun(run, tmp_path, monkeypatch, tamper=None):
    """The run's checkpoints with the last one gone (and the cache tampered with by `tamper`), run again."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run["root"] / "ckpt", ckpt)
    shutil.rmtree(ckpt / "step_00000004")
    if tamper:
        tamper(ckpt / CACHE_FILE)
    calls = []
    real = stage.compute_reference
    monkeypatch.setattr(stage, "compute_reference", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    metrics = preference(run["params"], run["base"], run["data"], tmp_path / "out", ckpt)
    return metrics, calls


def test_lora_dpo_lowers_the_loss_and_logs_rewards(run):
    m, out = run["metrics"], run["root"] / "out"
    loss = losses(out)
    assert len(loss) == 4
    assert loss[0] == pytest.approx(np.log(2), abs=1e-6)  # LoRA starts as the base: policy == reference
    assert loss[-1] < loss[0] - 0.05
    assert m["method"] == "lora" and m["trainable_params"] < m["total_params"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    pref = rows(out / "plots" / "preference.csv")
    assert [int(r["step"]) for r in pref] == [1, 2, 3, 4]
    assert float(pref[-1]["margins"]) > 0 and float(pref[-1]["accuracy"]) > 0.5
    assert pref[1]["heldout_margins"] and pref[3]["heldout_accuracy"]  # the loop's evaluations, steps 2 and 4
    assert m["tuned_heldout_margins"] > m["base_heldout_margins"] == 0.0
    assert m["tuned_heldout_loss"] < m["base_heldout_loss"]
    assert json.loads((out / "run.json").read_text())["loss_kind"] == "dpo"


def test_reference_computed_once_per_pair_and_cached(run):
    assert run["calls"] == [len(PAIRS), 3]  # train and held-out pairs, one pass each, before training
    cache = run["root"] / "ckpt" / CACHE_FILE
    assert cache.is_file()


def test_resume_is_exact_and_reuses_the_cache(run, tmp_path, monkeypatch, caplog):
    mtime = (run["root"] / "ckpt" / CACHE_FILE).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        again, calls = rerun(run, tmp_path, monkeypatch)
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    assert calls == []  # nothing recomputed: the cache was read
    assert (tmp_path / "ckpt" / CACHE_FILE).stat().st_mtime_ns == mtime  # copied with its mtime, never rewritten
    assert again["steps"] == 4
    assert losses(tmp_path / "out") == losses(run["root"] / "out")
    tail = rows(tmp_path / "out" / "plots" / "preference.csv")
    straight = {r["step"]: r for r in rows(run["root"] / "out" / "plots" / "preference.csv")}
    for r in tail:
        assert r["margins"] == straight[r["step"]]["margins"]


def test_a_tampered_cache_is_recomputed_not_used(run, tmp_path, monkeypatch, caplog):
    def tamper(path):
        blob = bytearray(path.read_bytes())
        blob[-8:] = np.float64(123.0).tobytes()  # the last cached value, metadata untouched
        path.write_bytes(bytes(blob))

    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        _, calls = rerun(run, tmp_path, monkeypatch, tamper)
    assert "does not match its own digest" in caplog.text
    assert calls == [len(PAIRS), 3]
    assert losses(tmp_path / "out") == losses(run["root"] / "out")  # the true reference values, recomputed
    assert read_cache(tmp_path / "ckpt" / CACHE_FILE, _checksum_of(tmp_path / "ckpt" / CACHE_FILE)) is not None


def _checksum_of(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["checksum"]


def test_other_data_makes_the_cache_stale(run, tmp_path, monkeypatch, caplog):
    """The held-out file changed: a fresh run (its identity names the data) and a cache whose checksum no longer
    matches, recomputed with a log line."""
    data = tmp_path / "data"
    shutil.copytree(run["data"], data)
    (data / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:4]))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run["root"] / "ckpt", ckpt)
    calls = []
    real = stage.compute_reference
    monkeypatch.setattr(stage, "compute_reference", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        preference(run["params"], run["base"], data, tmp_path / "out", ckpt)
    assert "checksum mismatch" in caplog.text
    assert calls == [len(PAIRS), 4]


def test_orpo_runs_without_a_reference(run, tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(stage, "compute_reference", lambda *a, **k: calls.append(1))
    data = tmp_path / "data"
    shutil.copytree(run["data"], data)
    same = {**PAIRS[0], "rejected": PAIRS[0]["chosen"]}  # allowed, with a warning: it teaches no preference
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*PAIRS, same]))
    params = load_params(None, [*LORA, "preference.loss=orpo", "preference.orpo_lambda=0.5", "preference.eval_every=0"])
    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        m = preference(params, run["base"], data, tmp_path / "out", tmp_path / "ckpt")
    assert "1 train pair(s) with chosen == rejected" in caplog.text
    assert calls == [] and not (tmp_path / "ckpt" / CACHE_FILE).exists()
    loss = losses(tmp_path / "out")
    assert loss[-1] < loss[0]
    assert m["loss_kind"] == "orpo" and m["tuned_heldout_loss"] < m["base_heldout_loss"]


@pytest.mark.slow
def test_two_ranks_at_zero3_match_one_rank(run, tmp_path):
    """`frontier preference` (method full, DPO) on 2 ranks at ZeRO-3 with every weight partitioned: the reference
    pass and the steps run through the partitioned engine, and the per-step losses and rewards are one rank's at
    the same global batch (2 x micro 3 = 1 x micro 6)."""
    import os
    import subprocess
    import sys

    from frontier.config import dump_resolved
    from tests.finetune.ranks import zero3_every_weight
    from tests.train.helpers import REPO

    full = [*LORA, "preference.method=full", "preference.lr=1e-3", "preference.grad_accum_steps=1",
            "preference.eval_every=0", "preference.checkpoint_every=0"]  # fmt: skip
    preference(load_params(None, [*full, "preference.micro_batch_size=6"]), run["base"], run["data"],
               tmp_path / "one", tmp_path / "ckpt_one")  # fmt: skip
    two = load_params(None, [*full, *zero3_every_weight(tmp_path), "preference.micro_batch_size=3",
                             "launch.nproc_per_node=2"])  # fmt: skip
    params_file = dump_resolved(two, tmp_path / "p")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "frontier", "preference", "--params", str(params_file), "--model", str(run["base"]),
         "--data", str(run["data"]), "--out", str(tmp_path / "two"), "--checkpoints", str(tmp_path / "ckpt_two")],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    one_rows, two_rows = (rows(tmp_path / d / "plots" / "preference.csv") for d in ("one", "two"))
    assert len(one_rows) == len(two_rows) == 4
    for a, b in zip(one_rows, two_rows):
        for key in ("loss", "rewards_chosen", "rewards_rejected", "accuracy"):
            assert abs(float(a[key]) - float(b[key])) <= 1e-5, (key, one_rows, two_rows)
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5, atol=0)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


def test_qlora_dpo_trains_an_adapter_on_the_quantized_base(run, tmp_path):
    """qlora: the reference is the 4-bit base with the adapter disabled; the run starts at log 2 and learns."""
    params = load_params(None, [*LORA, "preference.method=qlora", "preference.quantize=4bit", "preference.eval_every=0",
                                "preference.max_steps=3", "preference.checkpoint_every=0"])  # fmt: skip
    m = preference(params, run["base"], run["data"], tmp_path / "out", tmp_path / "ckpt")
    loss = losses(tmp_path / "out")
    assert loss[0] == pytest.approx(np.log(2), abs=1e-5) and loss[-1] < loss[0]
    assert m["method"] == "qlora" and (tmp_path / "out" / "adapter" / "base_quantization.json").is_file()


def test_micro_batch_size_auto_sizes_pairs(run, tmp_path):
    """micro_batch_size auto: the wiring measures a sample (a pair: two rows) through the loss module and splits
    the global batch of pairs; the run trains as a fixed split would."""
    params = load_params(None, [*LORA, "preference.micro_batch_size=auto", "preference.global_batch_size=6",
                                "preference.grad_accum_steps=1", "preference.eval_every=0", "preference.max_steps=2",
                                "preference.checkpoint_every=0"])  # fmt: skip
    m = preference(params, run["base"], run["data"], tmp_path / "out", tmp_path / "ckpt")
    split = json.loads((tmp_path / "out" / "run.json").read_text())["batch"]
    assert split["micro_batch_size"] * split["grad_accum_steps"] == 6
    assert losses(tmp_path / "out")[0] == pytest.approx(np.log(2), abs=1e-6) and m["steps"] == 2


def test_fused_head_gives_the_same_steps(run, tmp_path):
    """kernels.fused_linear_cross_entropy: the log-probs from the fused head + loss (no logits tensor) give the
    unfused run's per-step losses and rewards."""
    short = [*LORA, "preference.eval_every=0", "preference.max_steps=3", "preference.checkpoint_every=0"]
    for on in ("false", "true"):
        p = load_params(None, [*short, f"kernels.fused_linear_cross_entropy={on}"])
        preference(p, run["base"], run["data"], tmp_path / on, tmp_path / f"ckpt_{on}")
    np.testing.assert_allclose(losses(tmp_path / "true"), losses(tmp_path / "false"), rtol=0, atol=1e-5)
    a, b = (rows(tmp_path / on / "plots" / "preference.csv") for on in ("true", "false"))
    np.testing.assert_allclose([float(r["margins"]) for r in a], [float(r["margins"]) for r in b], atol=1e-5)
