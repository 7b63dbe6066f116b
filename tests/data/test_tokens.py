"""The token shard format: writer + reader round trip, shard boundaries, validation, checksums."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from frontier.data.tokens import ShardWriter, TokenShards, write_split
from frontier.errors import DataError


def _docs(rng: np.random.Generator, n: int, vocab: int) -> list[np.ndarray]:
    return [rng.integers(0, vocab, size=int(rng.integers(0, 40))) for _ in range(n)]


def test_round_trip_across_shard_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 50, 300)
    meta = write_split(
        tmp_path / "s", docs, vocab_size=300, eos_id=1, bos_id=2, pad_id=0, num_bytes=77, shard_tokens=37
    )
    stream = np.concatenate(docs).astype(np.int64)
    ts = TokenShards(tmp_path / "s")
    assert ts.num_tokens == stream.size == meta["num_tokens"]
    assert len(ts.shards) == -(-stream.size // 37)
    assert all(s["tokens"] == 37 for s in ts.shards[:-1])
    assert (ts.dtype, ts.vocab_size, ts.eos_id, ts.bos_id, ts.pad_id, ts.num_bytes) == (
        np.dtype("<u2"),
        300,
        1,
        2,
        0,
        77,
    )
    # every window, including ones spanning 2+ shards, equals the concatenated stream
    for start in range(0, stream.size, 5):
        for length in (0, 1, 36, 37, 38, 100):
            if start + length <= stream.size:
                got = ts.read(start, length)
                assert got.dtype == np.int64
                np.testing.assert_array_equal(got, stream[start : start + length])
    expected_starts = np.concatenate(([0], np.cumsum([d.size for d in docs])[:-1]))
    np.testing.assert_array_equal(ts.doc_starts, expected_starts)
    with pytest.raises(IndexError):
        ts.read(stream.size - 1, 2)
    ts.verify()
    clone = pickle.loads(pickle.dumps(ts))
    np.testing.assert_array_equal(clone.read(30, 20), stream[30:50])


def test_uint32_for_large_vocab(tmp_path):
    meta = write_split(tmp_path / "s", [[70000, 3], [65535]], vocab_size=70001, eos_id=3)
    assert meta["dtype"] == "uint32"
    ts = TokenShards(tmp_path / "s")
    np.testing.assert_array_equal(ts.read(0, 3), [70000, 3, 65535])
    assert (tmp_path / "s" / "shard_00000.bin").stat().st_size == 12


def test_token_out_of_vocab_rejected(tmp_path):
    with pytest.raises(DataError, match="token id 300"):
        write_split(tmp_path / "s", [[1, 300]], vocab_size=300, eos_id=1)


def test_add_batch_equals_add(tmp_path):
    rng = np.random.default_rng(1)
    docs = _docs(rng, 20, 100)
    write_split(tmp_path / "a", docs, vocab_size=100, eos_id=0, shard_tokens=16)
    with ShardWriter(tmp_path / "b", vocab_size=100, eos_id=0, shard_tokens=16) as w:
        w.add_batch(np.concatenate(docs[:7]), [d.size for d in docs[:7]])
        w.add_batch(np.concatenate(docs[7:]), [d.size for d in docs[7:]])
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_verify_catches_flipped_byte(tmp_path):
    write_split(tmp_path / "s", [list(range(100))] * 3, vocab_size=128, eos_id=0, shard_tokens=128)
    path = tmp_path / "s" / "shard_00001.bin"
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    path.write_bytes(bytes(data))
    ts = TokenShards(tmp_path / "s")  # sizes still agree: only the checksum can tell
    with pytest.raises(DataError, match="shard_00001.bin"):
        ts.verify()


def test_verify_refuses_a_meta_without_checksums(tmp_path):
    write_split(tmp_path / "s", [list(range(100))] * 3, vocab_size=128, eos_id=0, shard_tokens=128)
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["shards"][1]["sha256"]  # a hand-edited or foreign meta: nothing to check against
    meta_path.write_text(json.dumps(meta))
    ts = TokenShards(tmp_path / "s")
    with pytest.raises(DataError, match="no sha256 recorded for shard_00001.bin"):
        ts.verify()


def test_truncated_shard_and_bad_meta(tmp_path):
    write_split(tmp_path / "s", [list(range(100))] * 3, vocab_size=128, eos_id=0, shard_tokens=128)
    path = tmp_path / "s" / "shard_00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match="shard_00000.bin.*truncated"):
        TokenShards(tmp_path / "s")
    with pytest.raises(DataError, match="not found"):
        TokenShards(tmp_path / "nope")
    (tmp_path / "t").mkdir()
    with pytest.raises(DataError, match="meta.json: missing"):
        TokenShards(tmp_path / "t")
    (tmp_path / "t" / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        TokenShards(tmp_path / "t")
    write_split(tmp_path / "u", [[1, 2]], vocab_size=8, eos_id=0)
    meta = json.loads((tmp_path / "u" / "meta.json").read_text())
    meta["num_docs"] = 5
    (tmp_path / "u" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="docs.npy"):
        TokenShards(tmp_path / "u")


def test_empty_split(tmp_path):
    meta = write_split(tmp_path / "s", [], vocab_size=10, eos_id=0)
    ts = TokenShards(tmp_path / "s")
    assert meta["num_tokens"] == ts.num_tokens == 0 and ts.doc_starts.size == 0
    assert ts.read(0, 0).size == 0
