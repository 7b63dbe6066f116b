"""Resharding: a ZeRO checkpoint written by 2 ranks resumes on 1, and one written by 1 resumes on 2.

The same run (global batch 4: 2 ranks x micro 2 or 1 rank x micro 4, so the same samples each step)
is stopped after step 2 of 4 and resumed on the other rank count by train.resume=auto; its per-step
losses and final weights must match an uninterrupted run within fp32 summation-order noise. ZeRO-1/2/3
go through DeepSpeed's universal checkpoint (frontier.train.checkpoint.reshard); ZeRO-0 holds the whole state and
loads as it is. Then the attacks: a manifest that lies about the layout, a universal copy tampered
with (before it is written and between its writing and its loading), a layout nothing converts.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from frontier.errors import CheckpointError
from frontier.train.checkpoint import manifest, reshard
from frontier.train.checkpoint.reshard import Layout
from frontier.train.run import train
from tests.train.helpers import assert_same_run, launch, log_tail, params, tiny_params, wait_all

STEPS = ("train.document_aware=true", "train.max_steps=4", "optimizer.lr=1e-2", "train.checkpoint.every_steps=2",
         "train.checkpoint.keep_last=5", "train.checkpoint.keep_best=false")  # fmt: skip
TWO, ONE = "train.micro_batch_size=2", "train.micro_batch_size=4"  # global batch 4 either way


def _run(stage: int, tmp: Path) -> list[str]:
    overrides = [*STEPS, f"engine.zero_stage={stage}"]
    if stage == 3:  # no parameter stays whole under ZeRO-3 (tiny ones would by default)
        ds_json = tmp / "ds.json"
        ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
        overrides.append(f"engine.deepspeed_config={ds_json}")
    return overrides


def _stopped_after_step_2(ckpt: Path, dest: Path) -> Path:
    """A copy of a finished run's checkpoints as if it had stopped after step 2 (auto resumes step 2)."""
    shutil.copytree(ckpt, dest)
    shutil.rmtree(dest / "step_00000004")
    return dest


def _layout(step_dir: Path) -> dict:
    return manifest.read_manifest(step_dir)["layout"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """Uninterrupted runs, made once: (stage, ranks) -> (its tmp dir, out dir, checkpoints dir)."""
    made: dict[tuple[int, int], tuple[Path, Path, Path]] = {}

    def get(stage: int, ranks: int) -> tuple[Path, Path, Path]:
        if (stage, ranks) not in made:
            tmp = tmp_path_factory.mktemp(f"zero{stage}_{ranks}ranks")
            out, ckpt = tmp / "out", tmp / "ckpt"
            if ranks == 1:  # in-process: a third of a launched run's time
                train(params(*_run(stage, tmp), ONE), corpus.tokens, corpus.tokenizer, out, ckpt)
            else:
                codes = wait_all(launch(2, tiny_params(*_run(stage, tmp), TWO), corpus, out, ckpt))
                assert codes == [0, 0], log_tail(out, 0) + log_tail(out, 1)
            made[(stage, ranks)] = (tmp, out, ckpt)
        return made[(stage, ranks)]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path, corpus, runs, stage, caplog):
    src_tmp, two_out, two_ckpt = runs(stage, 2)
    assert _layout(two_ckpt / "step_00000002") == {"world_size": 2, "zero_stage": stage,
                                                   "partitions": 2 if stage else 1, "precision": "fp32"}  # fmt: skip
    ckpt, out = _stopped_after_step_2(two_ckpt, tmp_path / "ckpt"), tmp_path / "out"
    with caplog.at_level("INFO", logger="frontier.train"):
        metrics = train(params(*_run(stage, src_tmp), ONE), corpus.tokens, corpus.tokenizer, out, ckpt)
    assert f"resumed from {ckpt / 'step_00000002'} at step 2" in caplog.text  # the same run, continued
    assert ("converting its ZeRO partitions to a universal checkpoint" in caplog.text) == (stage > 0)
    assert metrics["world_size"] == 1 and metrics["steps"] == 4
    assert not (ckpt / reshard.CACHE_DIR).exists()  # the universal copy is gone once loaded
    assert _layout(ckpt / "step_00000004")["world_size"] == 1  # saved in the new layout
    assert_same_run(two_out, out, steps=4)
    assert_same_run(runs(stage, 1)[1], out, steps=4)  # and the one-rank run it now is


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_one_rank_checkpoint_resumes_on_two_ranks(tmp_path, corpus, runs, stage):
    src_tmp, one_out, one_ckpt = runs(stage, 1)
    ckpt, out = _stopped_after_step_2(one_ckpt, tmp_path / "ckpt"), tmp_path / "out"
    codes = wait_all(launch(2, tiny_params(*_run(stage, src_tmp), TWO), corpus, out, ckpt))
    assert codes == [0, 0], log_tail(out, 0) + log_tail(out, 1)
    assert f"resumed from {ckpt / 'step_00000002'} at step 2" in log_tail(out, 0, 20000)
    assert "no RNG state for rank 1 (written by 1 rank(s))" in log_tail(out, 1, 20000)
    assert not (ckpt / reshard.CACHE_DIR).exists()
    assert _layout(ckpt / "step_00000004") == {"world_size": 2, "zero_stage": stage,
                                               "partitions": 2 if stage else 1, "precision": "fp32"}  # fmt: skip
    assert_same_run(one_out, out, steps=4)


@pytest.mark.slow
def test_zero1_checkpoint_resumes_under_zero2(tmp_path, corpus, runs, caplog):
    """ZeRO-1 and 2 share their file format: a ZeRO-1 checkpoint continues under ZeRO-2 (explicitly: the ZeRO stage
    is a run param, so auto would start afresh), on one rank as it is."""
    src_tmp, one_out, one_ckpt = runs(1, 1)
    ckpt = _stopped_after_step_2(one_ckpt, tmp_path / "ckpt")
    overrides = [*_run(2, src_tmp), ONE, f"train.resume={ckpt / 'step_00000002'}"]
    with caplog.at_level("INFO", logger="frontier.train"):
        train(params(*overrides), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
    assert "at step 2" in caplog.text and "converting" not in caplog.text
    assert_same_run(one_out, tmp_path / "out", steps=4)


# -- attacks and mismatches -----------------------------------------------------------------------


def _rewrite_manifest(step_dir: Path, **changes) -> None:
    """What an attacker (or a careless edit) can do: change the metadata, keep every file hash valid."""
    meta = manifest.read_manifest(step_dir)
    meta.update(changes)
    (step_dir / manifest.MANIFEST).write_text(json.dumps(meta))
    assert manifest.verify(step_dir) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "lie, told",
    [
        # "1 rank" would have it loaded as it is: DeepSpeed would fail on the second partition file
        ({"world_size": 1, "partitions": 1}, "partitions: 1 recorded, 2 found"),
        ({"zero_stage": 0, "partitions": 1}, "ZeRO stage: ZeRO-0 (whole state) recorded, ZeRO-1/2 found"),
        ({"zero_stage": 3}, "ZeRO stage: ZeRO-3 recorded, ZeRO-1/2 found"),
        ({"precision": "bf16"}, "precision: bf16 recorded, fp16 or fp32 found"),
        ({"world_size": "2"}, "is not a layout record"),
    ],
    ids=["ranks", "zero0", "zero3", "precision", "garbage"],
)
def test_a_manifest_that_lies_about_its_layout_is_refused(tmp_path, corpus, runs, lie, told):
    src_tmp, _, two_ckpt = runs(2, 2)
    ckpt = _stopped_after_step_2(two_ckpt, tmp_path / "ckpt")
    step = ckpt / "step_00000002"
    _rewrite_manifest(step, layout={**_layout(step), **lie})
    with pytest.raises(CheckpointError) as err:
        train(params(*_run(2, src_tmp), ONE), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
    assert told in str(err.value) and str(err.value).startswith(str(step)) and "\n" not in str(err.value)
    assert not (ckpt / reshard.CACHE_DIR).exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.slow
def test_a_planted_universal_copy_is_never_loaded(tmp_path, corpus, runs, monkeypatch, caplog):
    """Whatever sits where the universal copy goes (a pickled payload with a matching manifest) is deleted,
    not reused: the copy is converted afresh from the verified checkpoint."""
    src_tmp, two_out, two_ckpt = runs(2, 2)
    ckpt = _stopped_after_step_2(two_ckpt, tmp_path / "ckpt")
    planted = ckpt / reshard.CACHE_DIR / "step_00000002"
    victim = planted / "ds" / "state" / "zero" / "lm.model.norm.weight" / "fp32.pt"
    victim.parent.mkdir(parents=True)
    with open(victim, "wb") as f:
        pickle.dump({"param": _Payload()}, f, protocol=2)
    manifest.write_manifest(planted, {"universal_of": "step_00000002"})
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="frontier.train"):
        train(params(*_run(2, src_tmp), ONE), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
    assert "converting its ZeRO partitions" in caplog.text and "at step 2" in caplog.text
    assert not (tmp_path / "pwned").exists()
    assert not (ckpt / reshard.CACHE_DIR).exists()
    assert_same_run(two_out, tmp_path / "out", steps=4)


@pytest.mark.slow
def test_a_universal_copy_changed_after_conversion_is_refused(tmp_path, corpus, runs, monkeypatch):
    """A byte flipped in the copy between its conversion and its loading (another process, a bad disk):
    the copy is re-hashed before any rank reads it, so the run stops with one line and loads nothing."""
    src_tmp, _, two_ckpt = runs(2, 2)
    ckpt = _stopped_after_step_2(two_ckpt, tmp_path / "ckpt")
    build = reshard.build

    def build_then_tamper(checkpoint: Path, cache: Path) -> None:
        build(checkpoint, cache)
        victim = cache / "ds" / "state" / "zero" / "lm.model.norm.weight" / "exp_avg.pt"
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))

    monkeypatch.setattr(reshard, "build", build_then_tamper)
    loads = []
    monkeypatch.setattr(reshard, "load_universal", lambda *a: loads.append(a))
    copy = ckpt / reshard.CACHE_DIR / "step_00000002"
    message = (f"{ckpt / 'step_00000002'}: its universal copy in {copy} changed before it was loaded "
               "(ds/state/zero/lm.model.norm.weight/exp_avg.pt does not match its sha256")  # fmt: skip
    with pytest.raises(CheckpointError, match=re.escape(message)):
        train(params(*_run(2, src_tmp), ONE), corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)
    assert not loads and not (ckpt / reshard.CACHE_DIR).exists()


@pytest.mark.slow
def test_a_layout_nothing_converts_ends_in_one_line(tmp_path, corpus, runs):
    """A ZeRO-2 checkpoint given to a ZeRO-3 run (explicitly: auto would start a fresh run, zero_stage being a
    run param): one line from the CLI saying how to resume it, no traceback, the checkpoint untouched."""
    src_tmp, _, two_ckpt = runs(2, 2)
    ckpt = _stopped_after_step_2(two_ckpt, tmp_path / "ckpt")
    step = ckpt / "step_00000002"
    out = tmp_path / "out"
    (proc,) = launch(1, tiny_params(*_run(3, tmp_path), ONE, f"train.resume={step}"), corpus, out, ckpt)
    assert proc.wait(timeout=240) == 2, log_tail(out)
    log = log_tail(out, 0, 20000)
    assert "Traceback" not in log
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"frontier train: error: {step}: written with ZeRO-2"), log
    assert "resume it with engine.zero_stage=2 (on any number of ranks) or set train.resume=none" in last
    assert manifest.verify(step) is None and not (ckpt / reshard.CACHE_DIR).exists()


@pytest.mark.slow
def test_a_changed_model_is_refused_before_any_conversion(tmp_path, corpus, runs, monkeypatch):
    src_tmp, _, two_ckpt = runs(2, 2)
    ckpt = _stopped_after_step_2(two_ckpt, tmp_path / "ckpt")
    monkeypatch.setattr(reshard, "build", lambda *a: pytest.fail("converted a checkpoint of another model"))
    with pytest.raises(CheckpointError, match=r"written for a different model \(hidden_size=32 there, 48 now\)"):
        train(params(*_run(2, src_tmp), ONE, "model.hidden_size=48", f"train.resume={ckpt / 'step_00000002'}"),
              corpus.tokens, corpus.tokenizer, tmp_path / "out", ckpt)  # fmt: skip


# -- layouts from manifests (no training) ---------------------------------------------------------

NOW2 = Layout(world_size=1, zero_stage=2, partitions=1, precision="fp32")


def _meta(names: list[str], ranks: int, layout: dict | None = None) -> dict:
    files = {f"ds/state/{n}": {} for n in names} | {f"rng/rank_{r:05d}.json": {} for r in range(ranks)}
    meta = {"files": files | {"trainer_state.json": {}}, "world_size": ranks}
    return meta if layout is None else meta | {"layout": layout}


ZERO2_TWO = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # fmt: skip


def test_fp16_and_fp32_zero_files_share_their_names():
    fp16 = {"world_size": 2, "zero_stage": 2, "partitions": 2, "precision": "fp16"}
    assert reshard.saved_layout(_meta(ZERO2_TWO, 2, fp16), NOW2) == Layout(2, 2, 2, "fp16")
    with pytest.raises(CheckpointError, match="precision: fp16 recorded, bf16 found"):
        bf16_names = [ZERO2_TWO[0], *("bf16_" + n for n in ZERO2_TWO[1:])]
        reshard.saved_layout(_meta(bf16_names, 2, fp16), NOW2)


def test_layout_of_a_checkpoint_from_before_layouts_were_recorded():
    assert reshard.saved_layout(_meta(ZERO2_TWO, 2), NOW2) == Layout(2, 2, 2, "fp32")
    bf16_zero3 = [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert reshard.saved_layout(_meta(bf16_zero3, 2), NOW2) == Layout(2, 3, 2, "bf16")
    assert reshard.saved_layout(_meta(["mp_rank_00_model_states.pt"], 3), NOW2) == Layout(3, 0, 1, "fp32")


@pytest.mark.parametrize(
    "names, message",
    [
        (ZERO2_TWO[:1] + ZERO2_TWO[2:], r"ZeRO optimizer partitions \[1\] \(expected 0..0\)"),
        (["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_01_optim_states.pt"], "tensor-parallel"),
        (["zero_pp_rank_0_mp_rank_00_optim_states.pt"], "no DeepSpeed model state"),
        ([*ZERO2_TWO[:2], "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"], "mixed precisions"),
    ],
)
def test_files_that_no_deepspeed_run_writes_are_refused(names, message):
    with pytest.raises(CheckpointError, match=message):
        reshard.saved_layout(_meta(names, 2), NOW2)


def test_which_layouts_convert():
    def two(stage: int, precision: str = "fp32") -> Layout:
        return Layout(2, stage, 2 if stage else 1, precision)

    def one(stage: int, precision: str = "fp32") -> Layout:
        return Layout(1, stage, 1, precision)

    assert not reshard.needs_universal(two(0), one(0))  # whole state: loads anywhere as it is
    assert not reshard.needs_universal(two(2), two(2))
    assert reshard.needs_universal(two(2), one(2)) and reshard.needs_universal(one(3), two(3))
    assert reshard.needs_universal(two(1), one(2))  # ZeRO-1 and 2 share their format
    with pytest.raises(CheckpointError, match="resume it with engine.zero_stage=0"):
        reshard.needs_universal(two(0), one(2))
    with pytest.raises(CheckpointError, match="resume it with engine.zero_stage=3"):
        reshard.needs_universal(two(3), two(2))
    with pytest.raises(CheckpointError, match="resume it with engine.precision=bf16 or set train.resume=none"):
        reshard.needs_universal(two(2, "bf16"), one(2))


def test_a_symlink_planted_as_the_copy_directory_is_removed_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / reshard.CACHE_DIR).symlink_to(elsewhere, target_is_directory=True)
    reshard._clear(tmp_path / "ckpt" / reshard.CACHE_DIR)
    assert not (tmp_path / "ckpt" / reshard.CACHE_DIR).exists() and (elsewhere / "precious").read_text() == "x"
