"""The prepare stage end to end: stats, dedup, split rules, weights, errors and atomic output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frontier.data import prepare as prepare_mod
from frontier.data.prepare import prepare
from frontier.errors import DataError

from .helpers import doc_text, files_source, make_params, read_jsonl, write_jsonl


def _corpus_dir(root: Path, texts: list[str], names: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (root / (names[i] if names else f"doc{i:04d}.txt")).write_text(text, encoding="utf-8")
    return root


def _run(tmp_path: Path, sources: list[dict], out: str = "out", **prepare_cfg) -> tuple[dict, Path]:
    params = make_params({"sources": sources, **prepare_cfg})
    stats = prepare(params, tmp_path / out)
    return stats, tmp_path / out


def test_outputs_formats_and_stats(tmp_path):
    texts = [doc_text(i) for i in range(40)]
    stats, out = _run(tmp_path, [files_source(_corpus_dir(tmp_path / "c", texts))], val_fraction=0.2)
    assert sorted(p.name for p in out.iterdir()) == [
        "params.resolved.yaml",
        "provenance.json",
        "stats.json",
        "train.jsonl",
        "val.jsonl",
    ]
    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "val.jsonl")
    assert all(set(r) == {"text", "source", "id"} and r["source"] == "corpus" for r in train + val)
    assert sorted(r["text"] for r in train + val) == sorted(texts)
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert json.loads((out / "stats.json").read_text()) == stats
    s = stats["sources"]["corpus"]
    assert (s["docs_read"], s["docs"], s["train_docs"] + s["val_docs"]) == (40, 40, 40)
    assert s["bytes"] == sum(len(t.encode()) for t in texts) == s["train_bytes"] + s["val_bytes"]
    assert stats["totals"]["docs"] == 40 and set(s["drops"]) >= {"min_chars", "max_chars", "max_line_chars"}
    assert yaml.safe_load((out / "params.resolved.yaml").read_text())["prepare"]["val_fraction"] == 0.2


def test_split_is_invariant_to_file_order_and_layout(tmp_path):
    texts = [doc_text(i) for i in range(60)]
    _, a = _run(tmp_path, [files_source(_corpus_dir(tmp_path / "a", texts))], out="oa")
    shuffled = texts[:]
    random.Random(3).shuffle(shuffled)
    names = [f"z{999 - i}.txt" for i in range(60)]
    _, b = _run(tmp_path, [files_source(_corpus_dir(tmp_path / "b", shuffled, names))], out="ob")
    write_jsonl(tmp_path / "c.jsonl", list(reversed(texts)))
    _, c = _run(tmp_path, [files_source(tmp_path / "c.jsonl")], out="oc")
    for split in ("train.jsonl", "val.jsonl"):
        assert (a / split).read_bytes() == (b / split).read_bytes() == (c / split).read_bytes()
    val_ids = {r["id"] for r in read_jsonl(a / "val.jsonl")}
    assert 0 < len(val_ids) < 60


def test_val_fraction_is_respected_on_a_larger_corpus(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [doc_text(i, words=8) for i in range(2000)])
    stats, _ = _run(tmp_path, [files_source(tmp_path / "d.jsonl")], val_fraction=0.1, dedup={"near": False})
    assert 140 <= stats["totals"]["val_docs"] <= 260  # binomial(2000, 0.1): mean 200, sd 13


def test_tiny_corpus_rule(tmp_path):
    stats, out = _run(tmp_path, [files_source(_corpus_dir(tmp_path / "c", [doc_text(1), doc_text(2)]))])
    assert stats["totals"]["val_docs"] == 1 and stats["totals"]["train_docs"] == 1
    stats, _ = _run(tmp_path, [files_source(tmp_path / "c")], out="o2", val_fraction=0.99)
    assert stats["totals"]["val_docs"] == 1 and stats["totals"]["train_docs"] == 1
    with pytest.raises(DataError, match="1 unique document.*at least 2"):
        _run(tmp_path, [files_source(_corpus_dir(tmp_path / "one", [doc_text(1)]))], out="o3")
    assert not (tmp_path / "o3").exists()


def test_exact_and_near_duplicates(tmp_path):
    texts = [doc_text(i, words=120) for i in range(20)]
    near = texts[3].replace("w3_5 ", "CHANGED ", 1)
    dup_dir = _corpus_dir(tmp_path / "b", [texts[0], texts[1].replace("\n", "\r\n"), near])
    sources = [files_source(_corpus_dir(tmp_path / "a", texts), "a"), files_source(dup_dir, "b")]
    stats, out = _run(tmp_path, sources)
    a, b = stats["sources"]["a"], stats["sources"]["b"]
    assert b["exact_duplicates"] == 2  # the CRLF copy is equal after normalisation
    assert b["near_duplicates"] + a["near_duplicates"] == 1
    assert a["near_clusters"] + b["near_clusters"] == 1
    assert stats["totals"]["docs"] == 20
    stats, _ = _run(tmp_path, sources, out="o2", dedup={"exact": False, "near": False})
    assert stats["totals"]["docs"] == 23 and stats["totals"]["exact_duplicates"] == 0


def test_filters_report_drops(tmp_path):
    texts = [doc_text(i) for i in range(10)] + ["tiny", "x" * 30_000 + "\n", "spam\n" * 50, "DROPME " + doc_text(99)]
    stats, _ = _run(
        tmp_path,
        [files_source(_corpus_dir(tmp_path / "c", texts))],
        clean={"max_line_chars": 20_000, "max_repeated_line_ratio": 0.5, "drop_regex": ["^DROPME"]},
    )
    drops = stats["sources"]["corpus"]["drops"]
    assert drops == {
        "min_chars": 1,
        "max_chars": 0,
        "max_line_chars": 1,
        "min_alnum_ratio": 0,
        "max_repeated_line_ratio": 1,
        "drop_regex[0]": 1,
    }
    assert stats["totals"]["docs"] == 10


def test_everything_filtered_names_the_filters(tmp_path):
    corpus = _corpus_dir(tmp_path / "c", ["short one", "short two", "x"])
    with pytest.raises(DataError, match=r"all 3 documents read were dropped: prepare\.clean\.min_chars dropped 3"):
        _run(tmp_path, [files_source(corpus)])
    assert not (tmp_path / "out").exists()


def test_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.bin").write_bytes(b"\x00\x01" * 100)
    with pytest.raises(DataError, match=r"no documents read from sources corpus \(1 binary files\)"):
        _run(tmp_path, [files_source(tmp_path / "c")])


def test_invalid_utf8_skip_counts_as_a_drop(tmp_path):
    corpus = _corpus_dir(tmp_path / "c", [doc_text(i) for i in range(5)])
    (corpus / "bad.txt").write_bytes(b"\xff\xfe" + doc_text(7).encode())
    stats, _ = _run(tmp_path, [files_source(corpus)], encoding_errors="skip")
    s = stats["sources"]["corpus"]
    assert s["drops"]["invalid_utf8"] == 1 and s["docs"] == 5 and "bad.txt" in s["problems"][0]
    stats, out = _run(tmp_path, [files_source(corpus)], out="o2", encoding_errors="replace")
    assert stats["sources"]["corpus"]["docs"] == 6 and stats["sources"]["corpus"]["invalid_utf8_docs"] == 1
    assert any("\ufffd" in r["text"] for r in read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl"))


def test_weights_upsample_and_downsample_train_only(tmp_path):
    a = _corpus_dir(tmp_path / "a", [doc_text(i) for i in range(40)])
    b = _corpus_dir(tmp_path / "b", [doc_text(100 + i) for i in range(200)])
    sources = [files_source(a, "a", weight=2.0), files_source(b, "b", weight=0.5)]
    stats, out = _run(tmp_path, sources, val_fraction=0.2)
    sa, sb = stats["sources"]["a"], stats["sources"]["b"]
    assert sa["train_docs"] == 2 * (sa["docs"] - sa["val_docs"])
    unique_b_train = sb["docs"] - sb["val_docs"]
    assert 0.3 * unique_b_train < sb["train_docs"] < 0.7 * unique_b_train
    train = read_jsonl(out / "train.jsonl")
    counts: dict[str, int] = {}
    for r in train:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    assert {counts[r["id"]] for r in train if r["source"] == "a"} == {2}
    assert {counts[r["id"]] for r in train if r["source"] == "b"} == {1}
    assert len({r["id"] for r in read_jsonl(out / "val.jsonl")}) == sa["val_docs"] + sb["val_docs"]
    again, _ = _run(tmp_path, sources, out="o2", val_fraction=0.2)  # deterministic
    assert (tmp_path / "o2" / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    assert again == stats


def test_failure_midway_keeps_previous_output(tmp_path, monkeypatch):
    corpus = _corpus_dir(tmp_path / "c", [doc_text(i) for i in range(10)])
    _, out = _run(tmp_path, [files_source(corpus)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prepare_mod, "_write_split", boom)
    with pytest.raises(RuntimeError):
        _run(tmp_path, [files_source(corpus)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_killed_midway_leaves_no_output(tmp_path):
    """SIGKILL during the read pass (full stdlib): the output directory never appears."""
    out = tmp_path / "out"
    code = "from frontier.config import load_params; from frontier.data.prepare import prepare; import sys; prepare(load_params(None), sys.argv[1])"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=Path(__file__).parents[2], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            spools = list(tmp_path.glob(".out.tmp-*/.spool.jsonl"))
            if spools and spools[0].stat().st_size > 100_000:
                break
            assert proc.poll() is None, "prepare ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()


def test_weights_that_sample_nothing_are_an_error(tmp_path):
    corpus = _corpus_dir(tmp_path / "c", [doc_text(i) for i in range(4)])
    with pytest.raises(DataError, match=r"sampled no train documents; raise prepare\.sources\[\]\.weight"):
        _run(tmp_path, [files_source(corpus, weight=1e-9)])
