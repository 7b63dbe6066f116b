"""Preference records an attacker or a typo makes: each is one DataError naming the file, the line and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frontier.errors import DataError
from frontier.finetune.preference_data import read_pairs
from tests.eval.tiny import corpus_texts, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(corpus_texts(10))


GOOD = {"prompt": "def f(x):\n", "chosen": "    return x\n", "rejected": "    return None\n"}


def _file(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_good_file_reads(tokenizer, tmp_path):
    (pair,) = read_pairs(_file(tmp_path, GOOD), tokenizer, 64)
    assert pair.prompt.size > 0 and pair.chosen.size > 0 and pair.rejected.size > 0


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"prompt": "p", "chosen": "c"}, r"missing rejected; expected keys prompt, chosen, rejected"),
        ({**GOOD, "chosen": 3}, r"expected three strings or three message lists, got str, int, str"),
        ({**GOOD, "chosen": [{"role": "assistant", "content": "x"}]}, r"got str, list, str"),
        ([1, 2], r"expected a JSON object, got list"),
        ({**GOOD, "prompt": ""}, r"prompt: empty"),
        ("{not json", r"train\.jsonl:2: not valid JSON"),
    ],
    ids=["missing-key", "number", "mixed", "not-an-object", "empty-prompt", "torn-json"],
)
def test_a_bad_record_is_one_line_naming_file_and_line(tokenizer, tmp_path, record, expected):
    path = _file(tmp_path, GOOD, record)
    with pytest.raises(DataError, match=expected) as caught:
        read_pairs(path, tokenizer, 64)
    assert f"{path}:2: " in str(caught.value)


def test_messages_without_a_chat_template_are_refused(tokenizer, tmp_path):
    chat = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}  # fmt: skip
    with pytest.raises(DataError, match=r"train\.jsonl:1: .*chat template"):
        read_pairs(_file(tmp_path, chat), tokenizer, 64)


def test_a_missing_file_and_one_where_nothing_fits_are_named(tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: not found"):
        read_pairs(tmp_path / "nowhere.jsonl", tokenizer, 64)
    long_prompt = {**GOOD, "prompt": "x = 1\n" * 200}
    with pytest.raises(DataError, match=r"no pair fits in 8 tokens"):
        read_pairs(_file(tmp_path, long_prompt), tokenizer, 8)


def test_a_prompt_merged_into_the_completion_collates_from_its_second_token(tokenizer):
    from frontier.finetune.preference_data import Pair, collate_pairs
    from frontier.model.loss import IGNORE_INDEX

    pair = Pair(0, np.zeros(0, dtype=np.int64), np.array([5, 6, 7]), np.array([5, 8]))
    batch = collate_pairs([pair], pad_id=0)
    assert batch.targets.tolist() == [[6, 7], [8, IGNORE_INDEX]]
