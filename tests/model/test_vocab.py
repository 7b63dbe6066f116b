"""The vocabulary of a model continued from a local directory against the tokens' vocabulary, both ways."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from frontier.config.model import ModelConfig
from frontier.errors import ConfigError
from frontier.model.build import build_model
from tests.model.families import build_checkpoint, build_tokenizer

VOCAB_LOGGER = "frontier.model"


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A Qwen2 checkpoint with 5 embedding rows more than its tokenizer has tokens, as real Qwen ones have."""
    tokens = len(build_tokenizer("qwen2"))
    return build_checkpoint("qwen2", tmp_path_factory.mktemp("qwen2"), extra_rows=5), tokens


def _vocab_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("vocabulary:")]


def test_fewer_rows_than_the_vocabulary_is_one_config_error(qwen2: tuple[Path, int]) -> None:
    model_dir, tokens = qwen2
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(init_from=str(model_dir)), tokens + 6)
    msg = str(err.value)
    assert f"{model_dir} has {tokens + 5} embedding rows but the tokens use a {tokens + 6}-token vocabulary" in msg
    assert "\n" not in msg and "tokenizer stage copies" in msg and "tokenize stages again" in msg  # the fix


def test_more_rows_than_the_vocabulary_is_one_info_line_and_trains(
    qwen2: tuple[Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    model_dir, tokens = qwen2
    with caplog.at_level(logging.INFO, logger=VOCAB_LOGGER):
        model = build_model(ModelConfig(init_from=str(model_dir)), tokens)
    assert _vocab_lines(caplog) == [
        f"vocabulary: {model_dir} has {tokens + 5} embedding rows for a {tokens}-token vocabulary; the 5 rows above "
        "it are never an input (checkpoints round their tables up, as Qwen's) and stay in the model and its export"
    ]
    ids = torch.tensor([[0, tokens - 1, 7, 3]])  # the highest id the tokens can hold is a row of its own
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.get_input_embeddings().weight.grad[tokens - 1].abs().sum() > 0


def test_equal_rows_say_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = build_checkpoint("mistral", tmp_path / "mistral")
    with caplog.at_level(logging.INFO, logger=VOCAB_LOGGER):
        build_model(ModelConfig(init_from=str(model_dir)), len(build_tokenizer("mistral")))
    assert _vocab_lines(caplog) == []
