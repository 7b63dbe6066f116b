"""A machine that refuses what a stage needs: full disks under the tokenizer, checkpoint and export
writes (a real tmpfs of a few KiB), an address-space limit (`ulimit -v`), and a model directory whose
pickled weights would run code. Each ends in one line on stderr naming the path or limit and what to
do, exit code 2, and nothing half-written."""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.eval.tiny import TRAIN_OVERRIDES, corpus_texts, make_tokenizer, save_model_dir, write_tokens

REPO = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0, reason="needs bubblewrap as root")
# A short run: the first checkpoint at step 2, the export right after.
TRAIN = [*TRAIN_OVERRIDES, "train.max_steps=2", "train.eval_every=2", "train.log_every=1", "schedule.warmup_steps=1"]


@functools.lru_cache(maxsize=1)
def _inputs(root: Path) -> dict[str, Path]:
    """Prepared documents, a tokenizer and token shards, written in-process (no stage start-up cost)."""
    texts = corpus_texts(40)
    prepared = root / "prepared"
    prepared.mkdir(parents=True)
    for split, part in (("train", texts[:34]), ("val", texts[34:])):
        (prepared / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    tokenizer = make_tokenizer(texts)
    tokenizer.save_pretrained(root / "tokenizer")
    write_tokens(root / "tokens", tokenizer, texts[:34], texts[34:])
    return {"prepared": prepared, "tokenizer": root / "tokenizer", "tokens": root / "tokens"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _inputs(tmp_path_factory.mktemp("inputs"))


def _frontier(args: list[str], cwd: Path, wrap: list[str] | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if not (cwd / "params.yaml").exists():  # defaults, but a tokenizer the size of the tiny corpus
        (cwd / "params.yaml").write_text(json.dumps({"tokenizer": {"vocab_size": 384}}))
    return subprocess.run([*(wrap or []), sys.executable, "-m", "frontier", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env, **kw)  # fmt: skip


def _full_disk(tmp_path: Path, size: int, args: list[str]) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    """Run `args` with a real tmpfs of `size` bytes over tmp_path/disk; what is left on it is listed
    from inside (the tmpfs goes away with the command)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    listing = tmp_path / "left.txt"
    script = f'"$@"; rc=$?; (cd {disk} && find . -mindepth 1 | sort) > {listing}; exit $rc'
    wrap = ["bwrap", "--dev-bind", "/", "/", "--size", str(size), "--tmpfs", str(disk), "sh", "-c", script, "sh"]
    proc = _frontier(args, tmp_path, wrap)
    return proc, listing.read_text().split(), disk


def _one_line(proc: subprocess.CompletedProcess, *expected: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("frontier "), proc.stderr[-3000:]
    for text in expected:
        assert text in lines[-1], lines[-1]
    return lines[-1]


@needs_bwrap
def test_full_disk_under_the_tokenizer_write(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = tmp_path / "disk" / "tok"
    proc, left, disk = _full_disk(tmp_path, 16384, ["tokenizer", "--data", str(inputs["prepared"]), "--out", str(out)])
    _one_line(proc, "No space left on device", str(out), "free some space")
    assert left == [], left  # the atomic output removed its temporary directory


@needs_bwrap
def test_full_disk_under_a_checkpoint_write(tmp_path: Path, inputs: dict[str, Path]) -> None:
    ckpt = tmp_path / "disk" / "ckpt"
    args = ["train", "--data", str(inputs["tokens"]), "--tokenizer", str(inputs["tokenizer"]),
            "--out", str(tmp_path / "run"), "--checkpoints", str(ckpt), *(f"--set={o}" for o in TRAIN)]  # fmt: skip
    proc, left, _ = _full_disk(tmp_path, 200_000, args)
    _one_line(proc, "No space left on device", str(ckpt), "free some space")
    # No checkpoint a resume would pick: only the save's own temporary (ignored, replaced by the next save).
    assert not [p for p in left if p.startswith("./step_")], left
    assert not (tmp_path / "run").exists()


@needs_bwrap
def test_full_disk_under_the_export(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = tmp_path / "disk" / "run"
    args = ["train", "--data", str(inputs["tokens"]), "--tokenizer", str(inputs["tokenizer"]),
            "--out", str(out), "--checkpoints", str(tmp_path / "ckpt"), *(f"--set={o}" for o in TRAIN)]  # fmt: skip
    proc, left, _ = _full_disk(tmp_path, 100_000, args)
    _one_line(proc, "No space left on device", str(out), "free some space")
    assert left == [], left


def _limit_address_space(kib: int):
    def preexec() -> None:  # in the child only: the test process keeps its own limits
        resource.setrlimit(resource.RLIMIT_AS, (kib * 1024, resource.getrlimit(resource.RLIMIT_AS)[1]))

    return preexec


@pytest.mark.parametrize("stage", ["train", "tokenize"])
def test_address_space_limit_too_low_to_start(tmp_path: Path, inputs: dict[str, Path], stage: str) -> None:
    # 400 MiB: importing torch fails (an ImportError, or a std::bad_alloc that aborts the process)
    if stage == "train":
        args = ["train", "--data", str(inputs["tokens"]), "--tokenizer", str(inputs["tokenizer"]),
                "--out", str(tmp_path / "run"), "--checkpoints", str(tmp_path / "ckpt"), *(f"--set={o}" for o in TRAIN)]  # fmt: skip
    else:
        args = ["tokenize", "--data", str(inputs["prepared"]), "--tokenizer", str(inputs["tokenizer"]),
                "--out", str(tmp_path / "run")]  # fmt: skip
    proc = _frontier(args, tmp_path, preexec_fn=_limit_address_space(400_000))
    _one_line(proc, "RLIMIT_AS", "ulimit -v", "400000 KiB", "raise it")
    assert not (tmp_path / "run").exists() and not (tmp_path / "ckpt").exists()


def test_address_space_limit_aborting_a_model_load(tmp_path: Path) -> None:
    model = save_model_dir(tmp_path / "model")
    proc = _frontier(["evaluate", "--model", str(model), "--data", str(tmp_path / "none"), "--out",
                      str(tmp_path / "eval")], tmp_path, preexec_fn=_limit_address_space(400_000))  # fmt: skip
    assert proc.returncode != -6, "aborted"  # was: terminate called after throwing 'std::bad_alloc'
    _one_line(proc, "RLIMIT_AS", "400000 KiB")
    assert not (tmp_path / "eval").exists()


def _pickled_model(path: Path) -> Path:
    """A model directory whose pytorch_model.bin would call print() when unpickled without weights_only."""
    from safetensors.torch import load_file

    save_model_dir(path)
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({**state, "payload": Payload()}, path / "pytorch_model.bin")
    return path


@pytest.mark.parametrize("stage", ["evaluate", "finetune"])
def test_pickled_weights_are_refused_in_one_line(tmp_path: Path, inputs: dict[str, Path], stage: str) -> None:
    model = _pickled_model(tmp_path / "model")
    data = inputs["tokens"] if stage == "evaluate" else tmp_path / "sft"
    if stage == "finetune":  # a valid fine-tune data directory, so the model load is what refuses
        data.mkdir()
        for name in ("train.jsonl", "heldout.jsonl"):
            (data / name).write_text(json.dumps({"prompt": "def f():", "response": " return 1"}) + "\n")
    args = [stage, "--model", str(model), "--data", str(data), "--out", str(tmp_path / "out")]
    if stage == "finetune":
        args += ["--checkpoints", str(tmp_path / "ckpt")]
    proc = _frontier(args, tmp_path)
    _one_line(proc, str(model), "pytorch_model.bin", "print", "safetensors")
    assert "pwned" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_library_errors_are_recognised_through_their_causes(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """The shapes the libraries raise, without their errno: Rust's io::Error text, torch's stream
    writer, torch's allocator, each possibly re-raised from inside another exception."""
    from frontier import cli

    def raising(exc: BaseException):
        def stage(*_a, **_k):
            try:
                raise exc
            except BaseException as inner:
                raise RuntimeError("while saving") from inner

        return stage

    cases = [
        (Exception("No space left on device (os error 28)"), "No space left on device while writing"),
        (Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)"), "quota"),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
            "out of memory",
        ),
        (RuntimeError("std::bad_alloc"), "out of memory"),
    ]
    for exc, expected in cases:
        monkeypatch.setattr("frontier.data.tokenizer.train_tokenizer", raising(exc))
        assert cli.main(["tokenizer", "--data", "d", "--out", "o"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
