"""The demo preference pairs from the SFT pairs: a docstring, its whole body chosen, the body's first line rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frontier.config import load_params
from frontier.errors import DataError
from frontier.finetune.preference_demo import build_preference_pairs, demo_pair
from frontier.finetune.sft_data import build_sft_pairs
from tests.finetune.test_sft_data import MODULES, prepared_dir


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sft_dir(root: Path, train: list[dict], heldout: list[dict]) -> Path:
    root.mkdir(parents=True)
    for name, records in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


def test_each_prompt_keeps_its_body_and_rejects_the_body_cut_after_one_line(tmp_path):
    params = load_params(None, ["finetune.heldout_fraction=0.2"])
    build_sft_pairs(params, prepared_dir(tmp_path / "prepared", MODULES), tmp_path / "sft")
    stats = build_preference_pairs(params, tmp_path / "sft", tmp_path / "pref")
    sft = {split: _read(tmp_path / "sft" / f"{split}.jsonl") for split in ("train", "heldout")}
    pref = {split: _read(tmp_path / "pref" / f"{split}.jsonl") for split in ("train", "heldout")}
    assert stats == {"train_pairs": len(pref["train"]), "heldout_pairs": len(pref["heldout"])}
    assert json.loads((tmp_path / "pref" / "stats.json").read_text()) == stats
    for split in ("train", "heldout"):
        # short prompts (preference.demo_max_prompt_chars) with bodies of two lines or more, in the SFT file's order
        usable = [r for r in sft[split] if len(r["prompt"]) <= 200 and len(r["response"].strip().splitlines()) >= 2]
        expected = usable[: 400 if split == "train" else 64]
        assert [(r["prompt"], r["chosen"]) for r in pref[split]] == [(r["prompt"], r["response"]) for r in expected]
        assert len(pref[split]) > 0
        for rec in pref[split]:
            assert set(rec) == {"prompt", "chosen", "rejected"}
            assert rec["chosen"].startswith(rec["rejected"]) and rec["rejected"].count("\n") == 1
            assert len(rec["rejected"]) < len(rec["chosen"])
    # the same SFT data gives the same bytes
    build_preference_pairs(params, tmp_path / "sft", tmp_path / "again")
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "pref" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_a_body_of_one_line_has_nothing_shorter_to_reject():
    assert demo_pair({"prompt": "def f():\n", "response": "    return 1\n"}) is None
    assert demo_pair({"prompt": "def f():\n", "response": "    return 1\n\n\n"}) is None  # blank lines are no code
    pair = demo_pair({"prompt": "def f():\n", "response": "    x = 1\n\n    return x"})
    assert pair == {"prompt": "def f():\n", "chosen": "    x = 1\n\n    return x", "rejected": "    x = 1\n"}


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ([{"prompt": "def f():", "response": "return 1"}], "a record whose body has two lines or more"),
        ([{"prompt": "a" * 201, "response": "x\ny"}], "demo_max_prompt_chars=200"),
        ([{"prompt": "a", "completion": "x"}], r'train.jsonl:1: expected string "prompt" and "response"'),
        ([{"prompt": "a", "response": ["x"]}], r"train.jsonl:1: expected string"),
        ([{"prompt": " ", "response": "x\ny"}], r"train.jsonl:1: an empty prompt or response"),
        (["not an object"], r"train.jsonl:1: expected a JSON object"),
    ],
)
def test_data_that_makes_no_pairs_is_one_data_error_and_no_output(tmp_path, train, match):
    good = [{"prompt": "a", "response": "x = 1\ny = 2\n"}]
    sft = _sft_dir(tmp_path / "sft", train, good)
    with pytest.raises(DataError, match=match):
        build_preference_pairs(load_params(None), sft, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_split_names_the_file_and_its_stage(tmp_path):
    sft = _sft_dir(tmp_path / "sft", [{"prompt": "a", "response": "x\ny"}], [])
    (sft / "heldout.jsonl").unlink()
    with pytest.raises(DataError, match=r"heldout.jsonl: not found \(the sft-data stage writes it\)"):
        build_preference_pairs(load_params(None), sft, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_stage_writes_pairs_the_preference_stage_reads(tmp_path):
    from frontier.cli import main
    from frontier.finetune.preference_data import read_pairs
    from tests.eval.tiny import corpus_texts, make_tokenizer

    sft = _sft_dir(
        tmp_path / "sft",
        [{"prompt": f"def f{i}():\n", "response": f"    x = {i}\n    return x\n"} for i in range(5)],
        [{"prompt": "def g():\n", "response": "    y = 2\n    return y\n"}],
    )
    argv = ["preference-data", "--data", str(sft), "--out", str(tmp_path / "pref"),
            "--set", "preference.demo_train_pairs=3"]  # fmt: skip
    assert main(argv) in (0, None)
    assert len(_read(tmp_path / "pref" / "train.jsonl")) == 3
    pairs = read_pairs(tmp_path / "pref" / "train.jsonl", make_tokenizer(corpus_texts(10)), 64)
    assert len(pairs) == 3 and all(p.chosen.tolist() != p.rejected.tolist() for p in pairs)
