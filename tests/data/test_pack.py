"""The tokenize stage: shards equal to a direct encode, identical for any worker count, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from frontier.data.pack import tokenize
from frontier.data.tokenizer import train_tokenizer
from frontier.data.tokens import TokenShards
from frontier.errors import DataError

from .helpers import doc_text, make_params

TEXTS = [doc_text(i, words=20 + 7 * i) for i in range(30)] + ["héllo ∑ 😀\n", "x\n"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    prepared = root / "prepared"
    prepared.mkdir()
    for split, texts in (("train", TEXTS[:26]), ("val", TEXTS[26:])):
        lines = [json.dumps({"text": t, "source": "ab"[i % 2], "id": f"{i:032x}"}) for i, t in enumerate(texts)]
        (prepared / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    tok_dir = train_tokenizer(make_params(tokenizer={"kind": "byte"}), prepared, root / "tok")
    return root, prepared, tok_dir


def _params(**tokenize_cfg):
    return make_params(tokenize={"shard_tokens": 1024, "batch_docs": 3, **tokenize_cfg})


def test_shards_match_a_direct_encode(corpus):
    root, prepared, tok_dir = corpus
    stats = tokenize(_params(), prepared, tok_dir, root / "t1", workers=1)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    for split, texts in (("train", TEXTS[:26]), ("val", TEXTS[26:])):
        shards = TokenShards(root / "t1" / split)
        shards.verify()
        expected = [tok.encode(t, add_special_tokens=False).ids + [2] for t in texts]  # eos after every doc
        stream = np.concatenate([np.array(e) for e in expected])
        np.testing.assert_array_equal(shards.read(0, shards.num_tokens), stream)
        np.testing.assert_array_equal(shards.doc_starts, np.cumsum([0] + [len(e) for e in expected])[:-1])
        assert shards.num_bytes == sum(len(t.encode()) for t in texts) == stats["splits"][split]["num_bytes"]
        assert (shards.vocab_size, shards.eos_id, shards.bos_id, shards.pad_id) == (259, 2, 1, 0)
        assert shards.dtype == np.dtype("<u2") and shards.meta["tokenizer"]["kind"] == "byte"
        sources = stats["splits"][split]["sources"]
        assert sum(s["tokens"] for s in sources.values()) == shards.num_tokens
        assert sources["a"]["docs"] == (len(texts) + 1) // 2
        assert sources["a"]["bytes_per_token"] == pytest.approx(sources["a"]["bytes"] / sources["a"]["tokens"])
    assert len(TokenShards(root / "t1" / "train").shards) > 3  # several shards, so boundaries are crossed
    assert (root / "t1" / "params.resolved.yaml").is_file() and (root / "t1" / "stats.json").is_file()


def test_byte_identical_for_one_and_two_workers(corpus):
    root, prepared, tok_dir = corpus
    tokenize(_params(), prepared, tok_dir, root / "w1", workers=1)
    tokenize(_params(), prepared, tok_dir, root / "w2", workers=2)
    # everything but the provenance record (its time and command line differ by design)
    files = sorted(p.relative_to(root / "w1") for p in (root / "w1").rglob("*") if p.is_file())
    files = [f for f in files if f.name != "provenance.json"]
    assert len(files) > 8
    for rel in files:
        assert (root / "w1" / rel).read_bytes() == (root / "w2" / rel).read_bytes(), rel


def test_bos_and_no_eos(corpus):
    root, prepared, tok_dir = corpus
    tokenize(_params(prepend_bos=True, append_eos=False), prepared, tok_dir, root / "bos", workers=1)
    shards = TokenShards(root / "bos" / "val")
    first = shards.read(0, 4).tolist()
    assert first[0] == 1 and first[1:] == [b + 3 for b in TEXTS[26].encode()[:3]]
    assert 2 not in shards.read(0, shards.num_tokens)


def test_errors(corpus, tmp_path):
    root, prepared, tok_dir = corpus
    with pytest.raises(DataError, match="no tokenizer.json"):
        tokenize(_params(), prepared, tmp_path / "none", tmp_path / "o")
    with pytest.raises(DataError, match="train.jsonl: not found"):
        tokenize(_params(), tmp_path, tok_dir, tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "val.jsonl").write_text(json.dumps({"text": "fine"}) + "\n")
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(7)]
    lines[5] = '{"no_text": 1}'
    (bad / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad/train.jsonl:6: not a prepared document line"):
        tokenize(_params(), bad, tok_dir, tmp_path / "o", workers=2)  # raised in a worker, reported here
    assert not (tmp_path / "o").exists()
