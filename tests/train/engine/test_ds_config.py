"""DeepSpeed config generated from params (the engine section and the run's batch); a user JSON may add settings
but not contradict params."""

from __future__ import annotations

import json

import pytest

from frontier.config import load_params
from frontier.errors import ConfigError
from frontier.train.engine.ds_config import build_ds_config, generate


def _generate(*overrides, world_size):
    p = load_params(None, list(overrides))
    return generate(p.engine, world_size, micro_batch_size=p.train.micro_batch_size,
                    grad_accum_steps=p.train.grad_accum_steps)  # fmt: skip


def _build(*overrides, world_size, section="train"):
    p = load_params(None, list(overrides))
    batch = getattr(p, section)
    return build_ds_config(p.engine, world_size, micro_batch_size=batch.micro_batch_size,
                           grad_accum_steps=batch.grad_accum_steps, section=section)  # fmt: skip


def test_generated_from_params():
    cfg = _generate(
        "train.micro_batch_size=3", "train.grad_accum_steps=5", "engine.grad_clip=0.5", "engine.zero_stage=3",
        "engine.offload_optimizer=true", "engine.offload_params=true", "engine.precision=fp16", world_size=4,
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
    cfg = _generate("engine.precision=bf16", "engine.zero_stage=1", world_size=1)
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"


def test_offload_needs_zero():
    with pytest.raises(ConfigError, match="engine.offload_params: parameter offload needs zero_stage 3"):
        load_params(None, ["engine.offload_params=true", "engine.zero_stage=2"])


def _with_json(tmp_path, data, *overrides, world_size=2, section="train"):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return _build(f"engine.deepspeed_config={path}", *overrides, world_size=world_size, section=section)


def test_user_json_adds_and_overrides_unowned_keys(tmp_path):
    cfg = _with_json(
        tmp_path,
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": 1234, "offload_optimizer": {"device": "auto"}},
         "communication_data_type": "fp32", "gradient_accumulation_steps": "auto", "train_batch_size": 64},
        "engine.zero_stage=2", "train.micro_batch_size=8", "train.grad_accum_steps=4",
    )  # fmt: skip
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 1234
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert cfg["communication_data_type"] == "fp32" and cfg["gradient_accumulation_steps"] == 4


@pytest.mark.parametrize(
    ("data", "overrides", "json_key", "params_key"),
    [
        ({"train_micro_batch_size_per_gpu": 8}, ["train.micro_batch_size=16"], "train_micro_batch_size_per_gpu",
         "train.micro_batch_size"),
        ({"zero_optimization": {"stage": 3}}, ["engine.zero_stage=2"], "zero_optimization.stage", "engine.zero_stage"),
        ({"bf16": {"enabled": True}}, ["engine.precision=fp32"], "bf16.enabled", "engine.precision"),
        ({"gradient_clipping": 0.3}, [], "gradient_clipping", "engine.grad_clip"),
        ({"train_batch_size": 10}, [], "train_batch_size", "train.micro_batch_size x train.grad_accum_steps"),
        ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, ["engine.zero_stage=2"],
         "zero_optimization.offload_optimizer.device", "engine.offload_optimizer"),
    ],
)  # fmt: skip
def test_contradictions_name_both_keys(tmp_path, data, overrides, json_key, params_key):
    with pytest.raises(ConfigError) as info:
        _with_json(tmp_path, data, *overrides)
    message = str(info.value)
    assert f"'{json_key}'" in message and params_key in message and str(tmp_path / "ds.json") in message
    assert "engine.deepspeed_config" in message


def test_a_fine_tunes_contradiction_names_its_own_batch_key(tmp_path):
    """The same engine section runs a fine-tune: its batch is finetune's, and the message says so."""
    with pytest.raises(ConfigError, match=r"contradicts finetune\.micro_batch_size = 8"):
        _with_json(tmp_path, {"train_micro_batch_size_per_gpu": 4}, "finetune.micro_batch_size=8", section="finetune")


@pytest.mark.parametrize("block", ["optimizer", "scheduler"])
def test_optimizer_and_scheduler_blocks_are_owned_by_params(tmp_path, block):
    with pytest.raises(ConfigError, match=f"'{block}' is set by params"):
        _with_json(tmp_path, {block: {"type": "Adam"}})


def test_unreadable_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        _build(f"engine.deepspeed_config={bad}", world_size=1)
    with pytest.raises(ConfigError, match="not found"):
        _build(f"engine.deepspeed_config={tmp_path / 'missing.json'}", world_size=1)
