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


@pytest.mark.parametrize("stage", ["train", "tokenize", "env"])
def test_address_space_limit_too_low_to_start(tmp_path: Path, inputs: dict[str, Path], stage: str) -> None:
    # 400 MiB: importing torch fails (an ImportError, or a std::bad_alloc that aborts the process)
    if stage == "env":  # imports torch too
        args = ["env"]
    elif stage == "train":
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


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def _as_bin(path: Path, name: str = "model", **extra) -> Path:
    """`path`'s {name}.safetensors turned into a pickled {bin name} holding its tensors and `extra`."""
    from safetensors.torch import load_file

    state = load_file(path / f"{name}.safetensors")
    (path / f"{name}.safetensors").unlink()
    target = path / ("pytorch_model.bin" if name == "model" else f"{name}.bin")
    torch.save({**state, **extra}, target)
    return target


def _pickled_model(path: Path) -> Path:
    """A model directory whose pytorch_model.bin would call print() when unpickled without weights_only."""
    save_model_dir(path)
    _as_bin(path, payload=_Payload())
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
    _one_line(proc, f"{model}: refused to load the pickle pytorch_model.bin", "it would call print", "safetensors")
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


@pytest.mark.parametrize(
    ("damage", "said"), [("garbage", "Unsupported operand"), ("empty", "ends too soon"), ("half", "")]
)
def test_a_damaged_bin_is_called_corrupt_not_refused(tmp_path: Path, damage: str, said: str) -> None:
    """A download cut short or not a torch file at all is not a security refusal (was: "refused ...
    it holds more than plain tensors"; an empty file raised EOFError with a traceback)."""
    from frontier.errors import CheckpointError
    from frontier.eval.model_io import load_model

    model = save_model_dir(tmp_path / "model")
    data = _as_bin(model).read_bytes()
    damaged = {"garbage": b"not a torch file\n" * 64, "empty": b"", "half": data[: len(data) // 2]}[damage]
    (model / "pytorch_model.bin").write_bytes(damaged)
    with pytest.raises(CheckpointError) as caught:
        load_model(model, torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith(str(model)) and "refused" not in message and said in message, message
    if damage != "half":  # a cut zip archive fails in torch's reader: the model load's own line names it
        assert "pytorch_model.bin: corrupt or not a torch file" in message, message


def _adapter(tmp_path: Path, base: Path, **extra) -> Path:
    """A LoRA adapter for the tiny model in `base`, pickled as adapter_model.bin (with `extra` in it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(adapter)
    _as_bin(adapter, "adapter_model", **extra)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    return adapter


@pytest.mark.parametrize("refused", ["base", "adapter"])
def test_merge_names_the_directory_whose_pickle_was_refused(tmp_path: Path, capsys, refused: str) -> None:
    """Was: the base model's refusal escaped merge and frontier.cli guessed the directory (--adapter)."""
    from frontier import cli

    base = save_model_dir(tmp_path / "base")
    adapter = _adapter(tmp_path, base, **({"payload": _Payload()} if refused == "adapter" else {}))
    if refused == "base":
        _as_bin(base, payload=_Payload())
    capsys.readouterr()
    assert cli.main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    named = {"base": base, "adapter": adapter}[refused]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"frontier merge: error: {named}: refused to load the pickle")
    assert "would call print" in last, last
    assert not (tmp_path / "merged").exists()


def test_init_from_a_refused_pickle_is_a_config_error(tmp_path: Path) -> None:
    from frontier.errors import ConfigError
    from frontier.model.build import load_pretrained

    model = _pickled_model(tmp_path / "model")
    with pytest.raises(ConfigError, match=f"{model}: refused to load the pickle pytorch_model.bin: it would call"):
        load_pretrained(model, 10)


@pytest.mark.parametrize("site", ["evaluate", "finetune", "merge", "init_from"])
def test_out_of_memory_in_any_model_load_is_not_called_a_bad_model(tmp_path: Path, monkeypatch, site: str) -> None:
    """Every from_pretrained site lets an allocation failure through for frontier.cli's out-of-memory
    line (was: merge and model.init_from called it a bad adapter / a bad init_from)."""
    from transformers import AutoModelForCausalLM

    def allocating(*_a, **_k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", allocating)
    if site == "evaluate":
        from frontier.eval.model_io import load_model as load

        call = functools.partial(load, model, torch.device("cpu"))
    elif site == "finetune":
        from frontier.finetune.adapter import load_base

        call = functools.partial(load_base, model, "none", torch.device("cpu"))
    elif site == "merge":
        from frontier.finetune.merge import merge

        call = functools.partial(merge, tmp_path / "adapter", tmp_path / "merged")
    else:
        from frontier.model.build import load_pretrained

        call = functools.partial(load_pretrained, model, 10)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        call()


@pytest.mark.parametrize("during", [OSError(28, "No space left on device"), MemoryError()])
def test_a_bug_raised_from_none_while_handling_a_resource_error_keeps_its_traceback(
    monkeypatch, capsys, during: BaseException
) -> None:
    """`raise ... from None` hides the full disk / failed allocation: what is left is a bug (was: one line
    "No space left on device" / "out of memory", exit code 2, no traceback)."""
    from frontier import cli

    def stage(*_a, **_k):
        try:
            raise during
        except (OSError, MemoryError):
            raise KeyError("a bug") from None

    monkeypatch.setattr("frontier.data.tokenizer.train_tokenizer", stage)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["tokenizer", "--data", "d", "--out", "o"])
    assert "error:" not in capsys.readouterr().err


def test_exception_chain_follows_what_a_traceback_shows() -> None:
    from frontier.errors import exception_chain

    def raised(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            return exc
        raise AssertionError("nothing raised")

    root = OSError(28, "No space left on device")

    def implicit():
        try:
            raise root
        except OSError:
            raise RuntimeError("while saving")  # noqa: B904

    def explicit():
        try:
            raise root
        except OSError as exc:
            raise RuntimeError("while saving") from exc

    def hidden():
        try:
            raise root
        except OSError:
            raise RuntimeError("while saving") from None

    assert [type(e) for e in exception_chain(raised(implicit))] == [RuntimeError, OSError]
    assert exception_chain(raised(explicit))[1] is root
    assert [type(e) for e in exception_chain(raised(hidden))] == [RuntimeError]
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop
    assert len(exception_chain(loop)) == 2
