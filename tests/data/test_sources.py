"""Reading sources: every format and compression, file discovery, and bad input counted, not fatal."""

from __future__ import annotations

import gzip
import json
import lzma
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from frontier.config.data import SourceConfig
from frontier.data.sources import MAX_PROBLEMS, SourceReader, stdlib_root
from frontier.errors import DataError

from .helpers import write_jsonl

TEXTS = ["first document\nwith two lines\n", "second document é ∑\n", "third\tone\n"]


def _read(path, encoding_errors="replace", max_docs=None, **kw):
    reader = SourceReader(
        SourceConfig(name="s", kind="files", path=str(path), **kw), encoding_errors=encoding_errors, max_docs=max_docs
    )
    return [d.text for d in reader], reader.stats


def _jsonl_bytes(texts, field="text"):
    return "".join(json.dumps({field: t, "other": 1}) + "\n" for t in texts).encode()


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        ("", lambda b: b),
        (".gz", gzip.compress),
        (".xz", lzma.compress),
        (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)
def test_jsonl_and_text_with_each_compression(tmp_path, suffix, compress):
    (tmp_path / f"docs.jsonl{suffix}").write_bytes(compress(_jsonl_bytes(TEXTS)))
    texts, stats = _read(tmp_path / f"docs.jsonl{suffix}")
    assert texts == TEXTS and stats.docs_read == 3 and stats.files == 1
    (tmp_path / f"one.txt{suffix}").write_bytes(compress(TEXTS[1].encode()))
    texts, _ = _read(tmp_path / f"one.txt{suffix}")
    assert texts == [TEXTS[1]]  # a text file is one document, whatever its compression


def test_parquet_column(tmp_path):
    table = pa.table({"body": TEXTS + [None], "n": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=2)
    texts, stats = _read(tmp_path / "docs.parquet", text_field="body")
    assert texts == TEXTS
    assert stats.malformed_records == 1 and "row 4" in stats.problems[0]  # the null row is counted
    texts, stats = _read(tmp_path / "docs.parquet", text_field="missing")
    assert texts == [] and stats.malformed_records == 1 and "no column 'missing'" in stats.problems[0]


def test_explicit_format_overrides_extension(tmp_path):
    (tmp_path / "docs.data").write_bytes(_jsonl_bytes(TEXTS, field="content"))
    texts, _ = _read(tmp_path / "docs.data", format="jsonl", text_field="content")
    assert texts == TEXTS
    texts, _ = _read(tmp_path / "docs.data")  # auto: an unknown extension is plain text
    assert len(texts) == 1 and texts[0].startswith('{"content"')


def test_directory_and_glob_sorted_and_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("A\n")
    (tmp_path / "b" / "c.txt").write_text("C\n")
    (tmp_path / "b" / "d.md").write_text("D\n")
    (tmp_path / ".hidden").write_text("H\n")
    texts, _ = _read(tmp_path)
    assert texts == ["A\n", "C\n", "D\n"]
    texts, _ = _read(tmp_path / "**" / "*.txt")
    assert texts == ["A\n", "C\n"]
    texts, _ = _read(tmp_path, max_docs=2)
    assert texts == ["A\n", "C\n"]


def test_stdlib_source_with_max_docs():
    reader = SourceReader(SourceConfig(), encoding_errors="replace", max_docs=5)
    docs = list(reader)
    assert len(docs) == 5 and reader.stats.files == 5
    assert all(d.where.endswith(".py") and d.where.startswith(str(stdlib_root())) for d in docs)
    assert not any(part in ("site-packages", "dist-packages") for f in reader.files for part in f.parts)
    assert len(reader.files) > 100


def test_missing_path_and_empty_glob_are_errors(tmp_path):
    with pytest.raises(DataError, match="source 's': path .*nope.* does not exist"):
        _read(tmp_path / "nope")
    with pytest.raises(DataError, match="glob .* matches no files"):
        _read(tmp_path / "*.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        _read(tmp_path / "empty")


def test_binary_unreadable_and_corrupt_files_are_counted(tmp_path):
    (tmp_path / "good.txt").write_text("fine text\n")
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "broken.txt.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    os.symlink(tmp_path / "gone.txt", tmp_path / "dangling.txt")
    texts, stats = _read(tmp_path)
    assert texts == ["fine text\n"]
    assert stats.binary_files == 1 and stats.unreadable_files == 2
    assert any("image.bin: binary file" in p for p in stats.problems)
    assert any("broken.txt.gz: unreadable" in p for p in stats.problems)
    assert any("dangling.txt: unreadable" in p for p in stats.problems)


def test_invalid_utf8_replace_or_skip(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1\n")
    (tmp_path / "good.txt").write_bytes("café utf-8\n".encode())
    texts, stats = _read(tmp_path, encoding_errors="replace")
    assert texts == ["caf\ufffd latin-1\n", "café utf-8\n"] and stats.invalid_utf8_docs == 1
    texts, stats = _read(tmp_path, encoding_errors="skip")
    assert texts == ["café utf-8\n"] and stats.invalid_utf8_docs == 1
    assert "bad.txt: invalid UTF-8 at byte 3" in stats.problems[0]


def test_malformed_jsonl_lines_reported_as_file_line(tmp_path):
    lines = [
        json.dumps({"text": "ok one"}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"text": "ok two"}),
    ] + ["{bad"] * 10
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    texts, stats = _read(path)
    assert texts == ["ok one", "ok two"]
    assert stats.malformed_records == 14
    assert len(stats.problems) == MAX_PROBLEMS  # only the first few are kept
    assert stats.problems[0].startswith(f"{path}:2: malformed JSON")
    assert stats.problems[1] == f"{path}:3: field 'text' missing, line skipped"
    assert stats.problems[2] == f"{path}:4: field 'text' not a string, line skipped"


def test_jsonl_max_docs_stops_early(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [f"doc {i}" for i in range(10)])
    texts, stats = _read(tmp_path / "d.jsonl", max_docs=3)
    assert texts == ["doc 0", "doc 1", "doc 2"] and stats.docs_read == 3
