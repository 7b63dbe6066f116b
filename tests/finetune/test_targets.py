"""LoRA targets: peft's all-linear by default (fused projections included, the head left out), a list overrides."""

from __future__ import annotations

import json

import pytest

from frontier.config import load_params
from frontier.finetune.run import finetune
from tests.finetune.helpers import ft_params
from tests.model.families import build_checkpoint

QUICK = ("finetune.max_steps=2", "finetune.eval_every=0", "finetune.max_seq_len=64")


def test_the_default_is_all_linear():
    assert load_params(None).finetune.target_modules == "all-linear"
    assert load_params(None, ["finetune.target_modules=[qkv_proj]"]).finetune.target_modules == ["qkv_proj"]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        # Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj: no hand-written targets needed
        ("phi3", ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]),
        # GPT-2's projections are transformers' Conv1D, which all-linear takes too
        ("gpt2", ["c_attn", "c_fc", "c_proj"]),
    ],
)
def test_all_linear_adapts_every_block_projection_and_not_the_head(tmp_path, sft, family, expected):
    model = build_checkpoint(family, tmp_path / family)
    metrics = finetune(ft_params("finetune.target_modules=all-linear", *QUICK), model, sft, tmp_path / "out",
                       tmp_path / "ckpt")  # fmt: skip
    assert metrics["lora"]["adapted_modules"] == expected
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert sorted({name.rsplit(".", 1)[-1] for name in config["target_modules"]}) == expected  # peft resolved it
    assert metrics["steps"] == 2 and 0 < metrics["trainable_params"] < metrics["total_params"]


def test_a_list_adapts_only_what_it_names(tmp_path, sft):
    model = build_checkpoint("phi3", tmp_path / "phi3")
    metrics = finetune(ft_params("finetune.target_modules=[qkv_proj]", *QUICK), model, sft, tmp_path / "out",
                       tmp_path / "ckpt")  # fmt: skip
    assert metrics["lora"]["adapted_modules"] == ["qkv_proj"]
