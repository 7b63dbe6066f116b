"""Data as a careless or hostile user supplies it: truncated archives, FIFOs, decompression bombs,
full and read-only disks, out of memory, stages killed mid-write and killed with workers running."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest
import yaml
import zstandard

from frontier.config.data import SourceConfig
from frontier.data.prepare import prepare
from frontier.data.sources import SourceReader, zstd_truncated
from frontier.errors import DataError
from frontier.utils.atomic import atomic_dir

from .helpers import doc_text, files_source, make_params

REPO = Path(__file__).resolve().parents[2]
LINES = [json.dumps({"text": doc_text(i)}) + "\n" for i in range(400)]
JSONL = "".join(LINES).encode()
COMPRESS = {".gz": gzip.compress, ".xz": lzma.compress, ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}


def _reader(path: Path, **kw) -> SourceReader:
    return SourceReader(SourceConfig(name="s", kind="files", path=str(path)), encoding_errors="replace", **kw)


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_truncated_archives_are_counted_or_fail(tmp_path: Path, suffix: str) -> None:
    data = COMPRESS[suffix](JSONL)
    path = tmp_path / f"docs.jsonl{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    reader = _reader(path)
    docs = list(reader)
    assert reader.stats.truncated_files == 1 and "truncated" in reader.stats.problems[0]
    assert len(docs) < len(LINES)  # what came before the cut is kept, and said to be partial
    with pytest.raises(DataError, match=rf"{path.name}: truncated .*corrupt_files: count"):
        list(_reader(path, corrupt_files="fail"))
    path.write_bytes(data)  # the whole file: nothing counted
    whole = _reader(path)
    assert len(list(whole)) == len(LINES) and whole.stats.truncated_files == 0


def test_zstd_frame_walk_finds_every_cut(tmp_path: Path) -> None:
    frames = b"".join(
        zstandard.ZstdCompressor(write_checksum=True).compress(x) for x in (JSONL[:5000], JSONL[5000:9000])
    )
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    data = frames + skippable
    path = tmp_path / "x.zst"
    path.write_bytes(data)
    assert not zstd_truncated(path)
    boundaries = {len(frames) - len(zstandard.ZstdCompressor(write_checksum=True).compress(JSONL[5000:9000])),
                  len(frames), 0}  # fmt: skip
    for cut in range(0, len(data), 7):
        path.write_bytes(data[:cut])
        assert zstd_truncated(path) == (cut not in boundaries), cut


def test_non_regular_files_are_skipped_not_waited_on(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"a{i}.txt").write_text(doc_text(i))
    os.mkfifo(corpus / "b.txt")  # nobody will ever write to it: opening it for reading would block forever
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare": {"sources": [files_source(corpus)]}}))
    proc = subprocess.run(
        [sys.executable, "-m", "frontier", "prepare", "--params", str(tmp_path / "params.yaml"), "--out",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    (source,) = stats["sources"].values() if isinstance(stats["sources"], dict) else stats["sources"]
    assert source["non_regular_files"] == 1 and source["docs_read"] == 10
    reader = _reader(corpus / "b.txt")  # named directly, too
    assert list(reader) == [] and reader.stats.non_regular_files == 1


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_decompression_bomb_is_read_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"bomb.{'txt' if fmt == 'text' else 'jsonl'}.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:  # ~256 KiB on disk, 256 MiB inside
        if fmt == "jsonl":
            f.write(LINES[0].encode())
            f.write(b'{"text": "')
        for _ in range(256):
            f.write(b"a" * (1 << 20))
        if fmt == "jsonl":
            f.write(b'"}\n' + LINES[1].encode())
    assert path.stat().st_size < 2 << 20
    reader = _reader(path, max_doc_bytes=4 << 20)
    tracemalloc.start()
    docs = list(reader)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak / 2**20:.0f} MiB while reading"
    assert reader.stats.oversized_docs == 1
    assert len(docs) == (2 if fmt == "jsonl" else 0)  # the lines around the giant one survive


def _cli(args: list[str], cwd: Path, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*wrap, sys.executable, "-m", "frontier", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)  # fmt: skip


@pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0, reason="needs bubblewrap as root")
@pytest.mark.parametrize(("mount", "message"), [("full", "No space left on device"), ("ro", "Read-only file system")])
def test_full_and_read_only_disks_end_in_one_line(tmp_path: Path, mount: str, message: str) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"{i}.txt").write_text(doc_text(i, words=400))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare": {"sources": [files_source(corpus)]}}))
    target = tmp_path / "disk"
    target.mkdir()
    # a real 64 KiB tmpfs, or the directory bound read-only, over `target` for this one command
    over = ["--size", "65536", "--tmpfs", str(target)] if mount == "full" else ["--ro-bind", str(target), str(target)]
    wrap = ["bwrap", "--dev-bind", "/", "/", *over]
    proc = _cli(["prepare", "--params", "params.yaml", "--out", str(target / "prepared")], tmp_path, wrap)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message in lines[-1] and str(target) in lines[-1], lines[-1]
    assert not (target / "prepared").exists() and not list(target.glob(".*"))  # nothing half-written


def test_out_of_memory_ends_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from frontier import cli

    def hungry(*_args, **_kwargs):
        raise MemoryError

    monkeypatch.setattr("frontier.data.prepare.prepare", hungry)
    assert cli.main(["prepare", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0] and "prepare.max_docs" in err[0]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".prepared.tmp-{dead.stdout.strip()}-deadbeef"
    (stale / "nested").mkdir(parents=True)
    (stale / "nested" / ".spool.jsonl").write_bytes(b"x" * 1000)
    live = tmp_path / f".prepared.tmp-{os.getpid()}-cafecafe"  # a writer still running: left alone
    live.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("ok")
    assert not stale.exists() and live.exists() and (out / "f").read_text() == "ok"
    params = make_params({"sources": [files_source(tmp_path / "none")]})
    (tmp_path / "none").mkdir()
    for i in range(10):
        (tmp_path / "none" / f"{i}.txt").write_text(doc_text(i))
    stale.mkdir()
    prepare(params, out)  # a real stage: cleans on start
    assert not stale.exists()


def test_a_killed_tokenize_takes_its_workers_with_it(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    big = "".join(json.dumps({"text": doc_text(i, words=200), "source": "s"}) + "\n" for i in range(20000))
    (prepared / "train.jsonl").write_text(big)
    (prepared / "val.jsonl").write_text(big[:20000].rsplit("\n", 1)[0] + "\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tokenizer": {"kind": "byte"}}))
    assert (
        _cli(["tokenizer", "--params", "params.yaml", "--data", "prepared", "--out", "tok"], tmp_path).returncode == 0
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stage = subprocess.Popen(
        [sys.executable, "-m", "frontier", "tokenize", "--params", "params.yaml", "--data", "prepared", "--tokenizer",
         "tok", "--out", "tokens", "--workers", "2"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parent = psutil.Process(stage.pid)
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and len(workers) < 2 and stage.poll() is None:
        workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.05)
    assert len(workers) >= 2, "the stage never started its workers"
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for proc in alive:
        proc.kill()
    assert not alive, f"workers outlived the killed stage: {[p.pid for p in alive]}"


# One bad record, many ways: each must cost its own line only (the old reader lost the rest of the file,
# or ended in a traceback), land in stats, and end a strict stage in one line naming file:line.
BAD_RECORDS = {
    "huge_int": '{"text": "x", "n": ' + "9" * 5000 + "}",  # past sys.get_int_max_str_digits(): ValueError
    "lone_surrogate": '{"text": "half a pair \\ud800 here"}',  # parses, then no UTF-8 writer takes it
    "deep": "[" * 100_000 + "]" * 100_000,  # RecursionError in the parser
    "raw_nul": '{"text": "a NUL \x00 byte"}',  # a NUL in the first 8 KiB made the whole file "binary"
}


def _with_bad_line(path: Path, bad: str, compress=lambda b: b) -> Path:
    path.write_bytes(compress((LINES[0] + bad + "\n" + "".join(LINES[1:20])).encode()))
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_one_bad_record_costs_its_line_not_the_file(tmp_path: Path, kind: str, suffix: str) -> None:
    path = _with_bad_line(tmp_path / f"docs.jsonl{suffix}", BAD_RECORDS[kind], COMPRESS.get(suffix, lambda b: b))
    reader = _reader(path)
    docs = list(reader)
    assert len(docs) == 20, reader.stats.problems  # every good line, before and after the bad one
    assert reader.stats.malformed_records == 1 and reader.stats.unreadable_files == 0
    assert reader.stats.problems[0].startswith(f"{path}:2: ") and reader.stats.problems[0].endswith("line skipped")
    assert len(reader.stats.problems[0]) < 400  # one short line, not the record echoed back


def test_bad_records_land_in_stats_json_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = tmp_path / "corpus.jsonl"
    good = [json.dumps({"text": doc_text(i)}) for i in range(10)]
    corpus.write_text("\n".join(good[:3] + list(BAD_RECORDS.values()) + good[3:]) + "\n")
    with caplog.at_level("WARNING", logger="frontier.data.sources"):
        result = prepare(make_params({"sources": [files_source(corpus)]}), tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats == json.loads(json.dumps(result))
    assert stats["sources"]["corpus"]["malformed_records"] == 4 and stats["sources"]["corpus"]["docs_read"] == 10
    assert stats["totals"]["malformed_records"] == 4
    for lineno in (4, 5, 6, 7):
        assert sum(f"{corpus}:{lineno}: " in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_strict_makes_a_bad_record_one_error_line(tmp_path: Path, kind: str, capsys) -> None:
    from frontier import cli

    corpus = _with_bad_line(tmp_path / "docs.jsonl", BAD_RECORDS[kind])
    params = {"prepare": {"strict": True, "sources": [files_source(corpus)]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["prepare", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{corpus}:2: " in err[0] and "prepare.strict" in err[0], err
    assert not (tmp_path / "out").exists()
    long = _with_bad_line(tmp_path / "long.jsonl", json.dumps({"text": "a" * 5000}))
    with pytest.raises(DataError, match=rf"{long.name}:2: longer than 4096 bytes"):  # over-long lines, too
        list(SourceReader(SourceConfig(name="s", kind="files", path=str(long)), encoding_errors="replace",
                          max_doc_bytes=4096, strict=True))  # fmt: skip


def test_strict_is_a_validated_bool(tmp_path: Path) -> None:
    from frontier.errors import ConfigError

    assert make_params({"strict": True}).prepare.strict is True
    assert make_params({}).prepare.strict is False
    with pytest.raises(ConfigError, match="prepare.strict"):
        make_params({"strict": "yes"})


def test_glob_over_a_symlink_loop_ends_fast(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.txt").write_text(doc_text(0))
    (root / "b" / "y.txt").write_text(doc_text(1))
    os.symlink("..", root / "a" / "up")  # two loops: glob.glob walks 2**40 paths below a/
    os.symlink("..", root / "a" / "up2")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "z.txt").write_text(doc_text(2))
    os.symlink(outside, root / "b" / "linked")  # a link out of the tree is still followed, once
    os.symlink(root / "a", root / "alias")  # a second way into a/: its files are listed once, by their real path
    script = (
        "import sys; from frontier.config.data import SourceConfig; from frontier.data.sources import SourceReader\n"
        f"r = SourceReader(SourceConfig(name='s', kind='files', path={str(root / '**' / '*.txt')!r}),"
        " encoding_errors='replace')\nprint('\\n'.join(map(str, r.files)))"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - start < 30
    assert proc.stdout.split() == [str(root / "a" / "x.txt"), str(root / "b" / "linked" / "z.txt"),
                                   str(root / "b" / "y.txt")]  # fmt: skip


def test_glob_matches_like_glob_glob_on_a_tree_without_links(tmp_path: Path, monkeypatch) -> None:
    import glob

    from frontier.data.discover import glob_files

    for rel in ["a.txt", "b.jsonl", ".h.txt", "d/c.txt", "d/.e/f.txt", "d/g/h.txt", "d/g/i.md", "k/l/m/n.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    patterns = ["**/*.txt", "*", "**", "d/**", "**/g/*", "d/*/*.txt", "[ab].*", "?/**/*.txt", ".*", "d/.e/*",
                "**/.e/*.txt", "nope/**/*.txt", "k/**/n.txt", "a.txt/**", "**/**/*.txt", "d/**/*"]  # fmt: skip
    for base in (str(tmp_path) + "/", ""):
        monkeypatch.chdir(tmp_path)
        for pattern in patterns:
            expected = sorted({Path(p) for p in glob.glob(base + pattern, recursive=True) if Path(p).is_file()})
            assert glob_files(base + pattern) == expected, base + pattern


def test_compressed_parquet_bomb_is_not_spooled_whole(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    bomb = tmp_path / "docs.parquet.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:  # ~128 KiB on disk, 128 MiB inside
        for _ in range(128):
            f.write(bytes(1 << 20))
    spooled: list[int] = []
    make = tempfile.TemporaryFile

    class Counting:
        """tempfile.TemporaryFile, remembering how much was written to it."""

        def __init__(self) -> None:
            self.f = make()

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            spooled.append(self.f.seek(0, 2))
            self.f.close()

        def __getattr__(self, name: str):
            return getattr(self.f, name)

    monkeypatch.setattr("frontier.data.sources.tempfile.TemporaryFile", Counting)
    reader = _reader(bomb)
    assert list(reader) == []
    assert spooled and max(spooled) <= 64 << 20, spooled
    assert reader.stats.oversized_files == 1 and reader.stats.problems[0].startswith(f"{bomb}: inflates past ")
    with pytest.raises(DataError, match=rf"{bomb.name}: inflates past .*decompression bomb"):
        list(_reader(bomb, corrupt_files="fail"))
    table = pa.table({"text": [doc_text(i) for i in range(50)]})  # a genuine one still reads
    pq.write_table(table, tmp_path / "plain.parquet", compression="none")
    (tmp_path / "ok.parquet.gz").write_bytes(gzip.compress((tmp_path / "plain.parquet").read_bytes()))
    good = _reader(tmp_path / "ok.parquet.gz")
    assert [d.text for d in good] == table.column("text").to_pylist() and good.stats.oversized_files == 0


@pytest.mark.parametrize("encoding_errors", ["replace", "skip"])
def test_parquet_value_with_invalid_utf8_costs_one_row(tmp_path: Path, encoding_errors: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Arrow takes the bytes as a string column unchecked; reading all of them as str would fail the file
    values = pa.array([b"good one", b"caf\xe9 latin-1", b"good two"], type=pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": values}), tmp_path / "docs.parquet")
    reader = SourceReader(SourceConfig(name="s", kind="files", path=str(tmp_path / "docs.parquet")),
                          encoding_errors=encoding_errors)  # fmt: skip
    texts = [d.text for d in reader]
    middle = ["caf\ufffd latin-1"] if encoding_errors == "replace" else []
    assert texts == ["good one", *middle, "good two"] and reader.stats.unreadable_files == 0
    assert reader.stats.invalid_utf8_docs == 1 and f"{tmp_path / 'docs.parquet'}:row 2" in reader.stats.problems[0]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": "caf\xe9"}', "not valid UTF-8"),
        (b'{"a": "\\udc80 alone"}', "lone surrogate"),
    ],
)
def test_iter_jsonl_bad_line_is_one_data_error(tmp_path: Path, line: bytes, why: str) -> None:
    from frontier.utils.jsonl import iter_jsonl

    path = tmp_path / "problems.jsonl"
    path.write_bytes(b'{"a": 1}\n' + line + b'\n{"a": 2}\n')
    with pytest.raises(DataError, match=rf"problems.jsonl:2: .*{why}") as info:
        list(iter_jsonl(path))
    assert "\n" not in str(info.value)
    path.write_bytes(b'{"a": "\\ud83d\\ude00 a real pair"}\n')  # a valid pair is one character, not an error
    assert [rec["a"] for _, rec in iter_jsonl(path)] == ["\U0001f600 a real pair"]


def test_iter_jsonl_reads_a_line_without_newline_in_bounded_memory(tmp_path: Path) -> None:
    from frontier.utils.jsonl import iter_jsonl

    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"a": "')
        for _ in range(64):
            f.write(b"a" * (1 << 20))  # 64 MiB and never a newline
    tracemalloc.start()
    with pytest.raises(DataError, match=r"huge.jsonl:1: line longer than 1048576 bytes"):
        list(iter_jsonl(path, max_line_bytes=1 << 20))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_a_drop_regex_that_passes_the_static_check_but_backtracks_ends_in_one_line(tmp_path: Path) -> None:
    r"""\d+\d+\d+\d+$ is no nested quantifier, so validation lets it through; on 3000 digits and a letter Python's
    re would try ~10**13 splits. The per-document timeout ends the stage in one line, in seconds."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "0.txt").write_text(doc_text(0))
    (corpus / "1.txt").write_text("1" * 3000 + "a\n")
    params = {"prepare": {"sources": [files_source(corpus)], "clean": {"drop_regex": [r"\d+\d+\d+\d+$"]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.monotonic()
    proc = _cli(["prepare", "--params", "params.yaml", "--out", str(tmp_path / "prepared")], tmp_path)
    assert time.monotonic() - start < 60
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "prepare.clean.drop_regex[0]" in lines[-1] and "catastrophic backtracking" in lines[-1], lines[-1]
    assert not (tmp_path / "prepared").exists()
