"""The demo preference pairs from the SFT pairs: a docstring, its own body chosen, another function's rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frontier.config import load_params
from frontier.errors import DataError
from frontier.finetune.preference_demo import build_preference_pairs, pair_up
from frontier.finetune.sft_data import build_sft_pairs
from tests.finetune.test_sft_data import MODULES, prepared_dir


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sft_dir(root: Path, train: list[dict], heldout: list[dict]) -> Path:
    root.mkdir(parents=True)
    for name, records in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


def test_each_prompt_keeps_its_body_and_rejects_another_functions(tmp_path):
    params = load_params(None, ["finetune.heldout_fraction=0.2"])
    build_sft_pairs(params, prepared_dir(tmp_path / "prepared", MODULES), tmp_path / "sft")
    stats = build_preference_pairs(params, tmp_path / "sft", tmp_path / "pref")
    sft = {split: _read(tmp_path / "sft" / f"{split}.jsonl") for split in ("train", "heldout")}
    pref = {split: _read(tmp_path / "pref" / f"{split}.jsonl") for split in ("train", "heldout")}
    assert stats == {"train_pairs": len(pref["train"]), "heldout_pairs": len(pref["heldout"])}
    assert json.loads((tmp_path / "pref" / "stats.json").read_text()) == stats
    for split in ("train", "heldout"):
        short = [r for r in sft[split] if len(r["prompt"]) <= 200]  # preference.demo_max_prompt_chars
        own = {(r["prompt"], r["response"]) for r in short}
        bodies = {r["response"] for r in short}  # a split pairs within itself: held-out bodies stay held out
        assert len(pref[split]) == min(len(short), 400 if split == "train" else 64) > 0
        for rec in pref[split]:
            assert set(rec) == {"prompt", "chosen", "rejected"}
            assert (rec["prompt"], rec["chosen"]) in own
            # another function's body: never one that some record gives this same prompt
            assert rec["rejected"] in bodies and (rec["prompt"], rec["rejected"]) not in own
    # the rejected bodies are spread over the split, not one body for every prompt
    assert len({r["rejected"] for r in pref["train"]}) > len(pref["train"]) // 2
    # the same SFT data gives the same bytes
    build_preference_pairs(params, tmp_path / "sft", tmp_path / "again")
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "pref" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_limits_and_equal_bodies():
    recs = [{"prompt": f"p{i}", "response": body} for i, body in enumerate(["a", "a", "b", "a"])]
    pairs = pair_up(recs, limit=10)
    # every prompt finds a partner with another body, skipping the equal ones (p1 -> b, p3 -> b after wrapping)
    assert [(p["prompt"], p["rejected"]) for p in pairs] == [("p0", "b"), ("p1", "b"), ("p2", "a"), ("p3", "b")]
    assert len(pair_up(recs, limit=2)) == 2
    assert pair_up([{"prompt": "p", "response": "same"}] * 3, limit=10) == []
    # two methods with the same signature and docstring: neither body is rejected for the other
    twins = [{"prompt": "p", "response": "v4"}, {"prompt": "p", "response": "v6"}, {"prompt": "q", "response": "x"}]
    assert [(p["prompt"], p["rejected"]) for p in pair_up(twins, limit=10)] == [("p", "x"), ("p", "x"), ("q", "v4")]
    assert pair_up(twins[:2], limit=10) == []


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ([{"prompt": "def f():", "response": "return 1"}], "needs two records with different prompts and responses"),
        ([{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "x"}], "needs two records"),
        ([{"prompt": "a", "response": "x"}, {"prompt": "a", "response": "y"}], "different prompts and responses"),
        ([{"prompt": "a", "completion": "x"}], r'train.jsonl:1: expected string "prompt" and "response"'),
        ([{"prompt": "a", "response": ["x"]}], r"train.jsonl:1: expected string"),
        ([{"prompt": " ", "response": "x"}], r"train.jsonl:1: an empty prompt or response"),
        ([{"prompt": "a" * 201, "response": "x"}, {"prompt": "b" * 201, "response": "y"}], "demo_max_prompt_chars=200"),
    ],
)
def test_data_that_makes_no_pairs_is_one_data_error_and_no_output(tmp_path, train, match):
    good = [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "y"}]
    sft = _sft_dir(tmp_path / "sft", train, good)
    with pytest.raises(DataError, match=match):
        build_preference_pairs(load_params(None), sft, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_split_names_the_file_and_its_stage(tmp_path):
    sft = _sft_dir(tmp_path / "sft", [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "y"}], [])
    (sft / "heldout.jsonl").unlink()
    with pytest.raises(DataError, match=r"heldout.jsonl: not found \(the sft-data stage writes it\)"):
        build_preference_pairs(load_params(None), sft, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_stage_writes_pairs_the_preference_stage_reads(tmp_path, capsys):
    from frontier.cli import main
    from frontier.finetune.preference_data import read_pairs
    from tests.eval.tiny import corpus_texts, make_tokenizer

    sft = _sft_dir(
        tmp_path / "sft",
        [{"prompt": f"def f{i}():\n", "response": f"    return {i}\n"} for i in range(5)],
        [{"prompt": "def g():\n", "response": "    pass\n"}, {"prompt": "def h():\n", "response": "    return\n"}],
    )
    rc = main(["preference-data", "--data", str(sft), "--out", str(tmp_path / "pref"), "--set",
               "preference.demo_train_pairs=3"])  # fmt: skip
    assert rc in (0, None)
    assert len(_read(tmp_path / "pref" / "train.jsonl")) == 3
    pairs = read_pairs(tmp_path / "pref" / "train.jsonl", make_tokenizer(corpus_texts(10)), 64)
    assert len(pairs) == 3 and all(p.chosen.tolist() != p.rejected.tolist() for p in pairs)
