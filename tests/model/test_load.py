"""frontier.model.load: a user's checkpoint in the run's precision, partitioned as it is built under ZeRO-3.

The checkpoints are real family layouts (tests/model/families.py: sharded safetensors + index, config.json,
generation_config.json, tokenizer). ZeRO-3 runs here on one process (zero.Init partitions over a world of
one: every parameter is still replaced by an empty placeholder and its values live in the partition); the
two-rank load is tests/train/test_init_from_zero3.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import deepspeed
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from frontier.config import load_params
from frontier.errors import ConfigError
from frontier.model.load import (
    is_partitioned,
    load_causal_lm,
    load_partitioned,
    read_config,
    safetensors_files,
    shape_twin,
)
from frontier.train.engine.ds_config import construction_config
from frontier.train.launch.distributed import init_distributed
from tests.model.families import build_checkpoint

SIZE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 checkpoint (tied embeddings) in 3 safetensors shards with an index."""
    return build_checkpoint("qwen2", tmp_path_factory.mktemp("qwen2"), seed=3, size=SIZE)


def _saved(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in safetensors_files(path) for k, v in load_file(str(f)).items()}


def _zero3(precision: str = "fp32") -> dict:
    init_distributed()  # a world of one (DeepSpeed's zero.Init needs a process group)
    config = construction_config(load_params(None, ["engine.zero_stage=3", f"engine.precision={precision}"]).engine, 1)
    assert config is not None
    return config


def _whole(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_checkpoint_is_sharded(qwen2: Path) -> None:
    assert (qwen2 / "model.safetensors.index.json").is_file() and len(safetensors_files(qwen2)) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_arrive_in_the_runs_dtype(qwen2: Path, dtype: torch.dtype) -> None:
    model = load_causal_lm(qwen2, dtype=dtype)
    saved = _saved(qwen2)
    for name, param in model.named_parameters():
        assert param.dtype == dtype, name
        assert torch.equal(param, saved[name].to(dtype)), name  # the fp32 file rounded once, to the run's dtype


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_builds_partitioned_and_loads_every_weight(qwen2: Path, precision: str) -> None:
    model = load_causal_lm(qwen2, dtype=torch.float32 if precision == "fp32" else torch.bfloat16,
                           zero3_config=_zero3(precision))  # fmt: skip
    assert is_partitioned(model)
    assert all(p.numel() == 0 for p in model.parameters())  # nothing whole on the rank: placeholders only
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    expected = AutoModelForCausalLM.from_pretrained(str(qwen2), local_files_only=True, dtype=model.dtype)
    got = _whole(model)
    for name, tensor in expected.state_dict().items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    rope = (model.model.rotary_emb.inv_freq, expected.model.rotary_emb.inv_freq)  # a buffer: not partitioned
    assert rope[0].dtype == torch.float32 and torch.equal(*rope)
    assert model.generation_config.eos_token_id == expected.generation_config.eos_token_id  # the directory's own
    # what counts parameters reads a meta-device twin: the partition hides the shapes
    twin = shape_twin(model)
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in expected.parameters())


def test_a_checkpoint_whose_names_do_not_map_falls_back_to_transformers(qwen2: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("config.json", "generation_config.json"):
        (odd / name).write_text((qwen2 / name).read_text())
    save_file({**_saved(qwen2), "model.unused.weight": torch.zeros(2)}, str(odd / "model.safetensors"))
    config = _zero3()
    probe = AutoModelForCausalLM.from_pretrained(str(qwen2), local_files_only=True)
    assert not load_partitioned(probe, safetensors_files(odd))  # an extra name: not one to one
    model = load_causal_lm(odd, dtype=torch.float32, zero3_config=config)  # transformers' own ZeRO-3 load
    got = _whole(model)
    assert all(torch.equal(got[k], v) for k, v in probe.state_dict().items())


def test_weights_that_disagree_with_config_json_are_one_clear_error(qwen2: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((qwen2 / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    save_file(_saved(qwen2), str(bad / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"mlp.down_proj.weight has shape \[32, 64\] but .* makes it \[32, 48\]"):
        load_causal_lm(bad, dtype=torch.float32, zero3_config=_zero3())


def test_errors_name_the_key_and_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"finetune.base: .*nope is not a Hugging Face model directory"):
        load_causal_lm(tmp_path / "nope", dtype=torch.float32, what="finetune.base")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"model.init_from: cannot load .*broken: .*config.json.*not a valid JSON"):
        load_causal_lm(tmp_path / "broken", dtype=torch.float32)
    with pytest.raises(ConfigError, match=r"model.init_from: cannot read .*broken/config.json"):
        read_config(tmp_path / "broken")  # what the context check reads before any load


def test_quantization_or_a_device_map_under_zero3_is_refused(qwen2: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be combined with ZeRO-3"):
        load_causal_lm(qwen2, dtype=torch.float32, zero3_config=_zero3(), device_map="cpu")
