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

from frontier.data.config import SourceConfig
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
