"""finetune.method full: every weight trains on the same wiring (ZeRO 0-3), a full model is exported, a resume
is exact, and merge hands the model on as the fine-tuned model."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from frontier.finetune.merge import merge
from frontier.finetune.run import finetune
from tests.finetune.helpers import SHORT, ft_params
from tests.finetune.ranks import assert_same_losses, finetune_stage, zero3_every_weight
from tests.train.helpers import losses, weights

FULL = ("finetune.method=full", "finetune.lr=3e-3")


@pytest.fixture(scope="module")
def full(tmp_path_factory, sft, base):
    """A full fine-tune of 6 steps with a checkpoint every 3 (what the resume test restarts from)."""
    root = tmp_path_factory.mktemp("full")
    params = ft_params(*FULL, *SHORT, "finetune.checkpoint_every=3")
    metrics = finetune(params, base, sft, root / "out", root / "ckpt")
    return {"root": root, "params": params, "metrics": metrics}


def test_full_trains_every_weight_and_exports_the_model(full, base):
    m, out = full["metrics"], full["root"] / "out"
    assert m["trainable_params"] == m["total_params"] > 0
    assert m["finetuned_heldout_loss"] < m["base_heldout_loss"] - 0.1  # ~4.72 -> ~4.2 measured
    assert m["method"] == "full" and "lora" not in m and not (out / "adapter").exists()
    tuned, before = weights(out), load_file(str(base / "model.safetensors"))
    assert tuned.keys() == before.keys()
    changed = [k for k in tuned if not torch.equal(tuned[k], before[k])]
    assert len(changed) == len(tuned)  # every tensor moved: nothing was frozen
    assert (out / "model" / "tokenizer.json").is_file()
    assert json.loads((out / "run.json").read_text())["method"] == "full"


def test_resume_from_a_mid_run_checkpoint_is_exact(full, sft, base, tmp_path, caplog):
    """The run's checkpoints with the last one gone: the rerun resumes at step 3 and reproduces steps 4-6 and the
    final weights bit for bit (model and optimizer state restored, not only the weights)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(full["root"] / "ckpt", ckpt)
    shutil.rmtree(ckpt / "step_00000006")
    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        again = finetune(full["params"], base, sft, tmp_path / "out", ckpt)
    assert f"resumed from {ckpt / 'step_00000003'} at step 3" in caplog.text
    assert again["steps"] == 6
    straight = full["root"] / "out"
    assert losses(tmp_path / "out") == losses(straight)
    w1, w2 = weights(straight), weights(tmp_path / "out")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_merge_hands_on_the_model_itself(full, tmp_path):
    """For full, merge's output is the fine-tuned model: the same files (hard links where the filesystem allows),
    loadable by transformers, plus its provenance."""
    from transformers import AutoModelForCausalLM

    model_dir = full["root"] / "out" / "model"
    merged = merge(full["root"] / "out", tmp_path / "merged")
    for path in model_dir.iterdir():
        assert (merged / path.name).read_bytes() == path.read_bytes()
    assert os.path.samefile(merged / "model.safetensors", model_dir / "model.safetensors")  # one filesystem: linked
    assert (merged / "provenance.json").is_file()
    ids = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(model_dir).eval()(input_ids=ids).logits
    assert torch.equal(a, b)


@pytest.mark.slow
def test_two_ranks_at_zero3_match_one_rank(full, sft, base, tmp_path):
    """`frontier finetune` on 2 ranks at ZeRO-3 with every weight partitioned (persistence threshold 0) gives
    one rank's per-step losses at the same global batch (2 x micro 4 = 1 x micro 8)."""
    zero3 = zero3_every_weight(tmp_path)
    two = ft_params(*FULL, *SHORT, *zero3, "finetune.micro_batch_size=4", "launch.nproc_per_node=2")
    finetune_stage(two, base, sft, tmp_path)
    assert_same_losses(full["root"] / "out", tmp_path / "two")
    shapes = [{k: v.shape for k, v in weights(out).items()} for out in (tmp_path / "two", full["root"] / "out")]
    assert shapes[0] == shapes[1]  # gathered whole from the shards
