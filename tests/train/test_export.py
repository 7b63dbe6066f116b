"""frontier.train.export's model directory: the family's own format, sharded above the shard size."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from frontier.model.load import load_causal_lm
from frontier.train.export import full_state_dict, save_model
from tests.model.families import build_checkpoint

SIZE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


def test_a_model_over_the_shard_size_is_sharded_and_reloads_to_the_same_logits(tmp_path: Path) -> None:
    source = build_checkpoint("phi3", tmp_path / "phi3", seed=2, size=SIZE)  # untied head: every weight saved
    lm = load_causal_lm(source, dtype=torch.float32).eval()
    state = full_state_dict(lm, partitioned=False, is_main=True)
    assert state is not None
    save_model(lm, state, tmp_path / "out", max_shard_size=40_000)  # bytes: a fraction of this model's weights

    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2 and set(index["weight_map"]) == set(state)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "phi3"
    assert (tmp_path / "out" / "generation_config.json").is_file()

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), local_files_only=True).eval()
    ids = torch.tensor([[3, 9, 27, 81, 5]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, lm(ids).logits)
