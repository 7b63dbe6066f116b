"""The training window comes from params (frontier.train.run.train_seq_len), never from a checkpoint's context."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontier.errors import ConfigError
from frontier.train.run import train_seq_len
from tests.model.families import build_checkpoint
from tests.train.helpers import params

SIZE = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint("qwen2", tmp_path_factory.mktemp("ctx"), size=SIZE)


def _window(*overrides: str) -> int:
    p = params(*overrides)
    return train_seq_len(p.model, p.train)


def test_a_fresh_model_trains_on_its_own_context_or_train_seq_len() -> None:
    assert _window("model.max_seq_len=16") == 16
    assert _window("model.max_seq_len=16", "train.seq_len=8") == 8
    with pytest.raises(ConfigError, match=r"train.seq_len: 32 exceeds the model's context model.max_seq_len=16"):
        _window("model.max_seq_len=16", "train.seq_len=32")


def test_init_from_trains_on_the_window_params_give(checkpoint: Path) -> None:
    init = f"model.init_from={checkpoint}"
    assert _window(init, "model.max_seq_len=16") == 16  # not the checkpoint's 64
    assert _window(init, "model.max_seq_len=16", "train.seq_len=48") == 48  # up to the checkpoint's context


def test_a_window_beyond_the_checkpoints_context_names_both(checkpoint: Path) -> None:
    init = f"model.init_from={checkpoint}"
    with pytest.raises(ConfigError, match=r"train.seq_len: 65 exceeds the context of model.init_from \(.*\): its "
                                          r"config.json has max_position_embeddings=64"):  # fmt: skip
        _window(init, "train.seq_len=65")
    with pytest.raises(ConfigError, match=r"model.max_seq_len: 128 \(train.seq_len unset\) exceeds .*=64"):
        _window(init, "model.max_seq_len=128")
