"""bf16 through DeepSpeed's mixed-precision optimizers (fp32 master weights); fp16 needs a GPU."""

from __future__ import annotations

import json

import pytest

from frontier.errors import ConfigError
from frontier.train.run import train
from tests.train.helpers import losses, params


@pytest.mark.parametrize("zero", [0, 2])
def test_bf16_trains_resumes_and_exports_bf16(tmp_path, corpus, zero):
    common = ("engine.precision=bf16", f"engine.zero_stage={zero}", "train.checkpoint.every_steps=3")
    train(params(*common, "train.max_steps=3"), corpus.tokens, corpus.tokenizer, tmp_path / "a", tmp_path / "ck")
    metrics = train(params(*common, "train.max_steps=6"), corpus.tokens, corpus.tokenizer, tmp_path / "b",
                    tmp_path / "ck")  # fmt: skip
    assert metrics["steps"] == 6 and metrics["precision"] == "bf16"
    got = losses(tmp_path / "b")
    assert got[:3] == losses(tmp_path / "a") and got[5] < got[0]  # history carried over; it learns
    assert json.loads((tmp_path / "b" / "model" / "config.json").read_text())["dtype"] == "bfloat16"


def test_fp16_on_the_cpu_is_a_config_error(tmp_path, corpus):
    with pytest.raises(ConfigError, match="engine.precision: fp16 needs a CUDA device"):
        train(params("engine.precision=fp16"), corpus.tokens, corpus.tokenizer, tmp_path / "o", tmp_path / "c")
