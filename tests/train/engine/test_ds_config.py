"""DeepSpeed config generated from params; a user JSON may add settings but not contradict params."""

from __future__ import annotations

import json

import pytest

from frontier.config import load_params
from frontier.errors import ConfigError
from frontier.train.engine.ds_config import build_ds_config, generate


def _train(*overrides):
    return load_params(None, list(overrides)).train


def test_generated_from_params():
    cfg = generate(
        _train("train.micro_batch_size=3", "train.grad_accum_steps=5", "train.grad_clip=0.5", "train.zero_stage=3",
               "train.offload_optimizer=true", "train.offload_params=true", "train.precision=fp16"),
        world_size=4,
    )  # fmt: skip
    assert cfg["train_batch_size"] == 3 * 5 * 4
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (3, 5)
    assert cfg["gradient_clipping"] == 0.5
    zero = cfg["zero_optimization"]
    assert (
        zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    )
    assert cfg["fp16"]["enabled"] and cfg["fp16"]["loss_scale"] == 0  # 0 = dynamic loss scaling
    assert not cfg["bf16"]["enabled"]
    assert "optimizer" not in cfg and "scheduler" not in cfg


def test_bf16_and_no_offload():
    cfg = generate(_train("train.precision=bf16", "train.zero_stage=1"), world_size=1)
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"


def test_offload_needs_zero():
    with pytest.raises(ConfigError, match="train.offload_params: parameter offload needs zero_stage 3"):
        _train("train.offload_params=true", "train.zero_stage=2")


def _with_json(tmp_path, data, *overrides, world_size=2):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return build_ds_config(_train(f"train.deepspeed_config={path}", *overrides), world_size)


def test_user_json_adds_and_overrides_unowned_keys(tmp_path):
    cfg = _with_json(
        tmp_path,
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": 1234, "offload_optimizer": {"device": "auto"}},
         "communication_data_type": "fp32", "gradient_accumulation_steps": "auto", "train_batch_size": 64},
        "train.zero_stage=2", "train.micro_batch_size=8", "train.grad_accum_steps=4",
    )  # fmt: skip
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 1234
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert cfg["communication_data_type"] == "fp32" and cfg["gradient_accumulation_steps"] == 4


@pytest.mark.parametrize(
    ("data", "overrides", "json_key", "params_key"),
    [
        ({"train_micro_batch_size_per_gpu": 8}, ["train.micro_batch_size=16"], "train_micro_batch_size_per_gpu",
         "train.micro_batch_size"),
        ({"zero_optimization": {"stage": 3}}, ["train.zero_stage=2"], "zero_optimization.stage", "train.zero_stage"),
        ({"bf16": {"enabled": True}}, ["train.precision=fp32"], "bf16.enabled", "train.precision"),
        ({"gradient_clipping": 0.3}, [], "gradient_clipping", "train.grad_clip"),
        ({"train_batch_size": 10}, [], "train_batch_size", "train.micro_batch_size x train.grad_accum_steps"),
        ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, ["train.zero_stage=2"],
         "zero_optimization.offload_optimizer.device", "train.offload_optimizer"),
    ],
)  # fmt: skip
def test_contradictions_name_both_keys(tmp_path, data, overrides, json_key, params_key):
    with pytest.raises(ConfigError) as info:
        _with_json(tmp_path, data, *overrides)
    message = str(info.value)
    assert f"'{json_key}'" in message and params_key in message and str(tmp_path / "ds.json") in message


@pytest.mark.parametrize("block", ["optimizer", "scheduler"])
def test_optimizer_and_scheduler_blocks_are_owned_by_params(tmp_path, block):
    with pytest.raises(ConfigError, match=f"'{block}' is set by params"):
        _with_json(tmp_path, {block: {"type": "Adam"}})


def test_unreadable_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        build_ds_config(_train(f"train.deepspeed_config={bad}"), 1)
    with pytest.raises(ConfigError, match="not found"):
        build_ds_config(_train(f"train.deepspeed_config={tmp_path / 'missing.json'}"), 1)
