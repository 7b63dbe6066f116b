"""Shared pieces of the training tests: a tiny corpus, tiny params, and launching ranks as processes."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from frontier.config import Params, dump_resolved, load_params
from frontier.data.tokenizer import train_tokenizer
from frontier.data.tokens import write_split

VOCAB = 259  # the byte tokenizer: pad 0, bos 1, eos 2, bytes 3..258
EOS, BOS, PAD = 2, 1, 0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Corpus:
    tokens: Path
    tokenizer: Path


def _docs(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[list[int]]:
    """Learnable documents of varied length: arithmetic runs over the byte ids, then EOS."""
    out = []
    for _ in range(n):
        length, start, stride = int(rng.integers(min_len, max_len)), int(rng.integers(0, 256)), int(rng.integers(1, 4))
        out.append([3 + (start + stride * i) % 256 for i in range(length)] + [EOS])
    return out


def make_corpus(root: Path, *, n_train: int = 240, n_val: int = 40, min_len: int = 4, max_len: int = 40) -> Corpus:
    """A byte tokenizer directory (the real tokenizer stage) and train/val token splits with documents."""
    train_tokenizer(load_params(None, ["tokenizer.kind=byte"]), root / "prepared", root / "tokenizer")
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        write_split(root / "tokens" / split, _docs(rng, n, min_len, max_len), vocab_size=VOCAB, eos_id=EOS, bos_id=BOS,
                    pad_id=PAD)  # fmt: skip
    return Corpus(tokens=root / "tokens", tokenizer=root / "tokenizer")


TINY = [
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.max_seq_len=16",
    "train.micro_batch_size=4",
    "train.max_steps=6",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "engine.monitor.progress_bar=false",
    "engine.monitor.system_every_s=0",
    "schedule.warmup_steps=2",
    "optimizer.lr=3e-3",
]


# 3 steps of a global batch of 4 packed windows whose target counts vary: what multi-rank layouts are compared on
BASE = ("train.document_aware=true", "train.max_steps=3", "optimizer.lr=1e-2")


def tiny_params(*overrides: str) -> list[str]:
    return [*TINY, *overrides]


def params(*overrides: str) -> Params:
    return load_params(None, tiny_params(*overrides))


def read_rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]


def losses(out_dir: Path) -> list[float]:
    return [r["loss"] for r in read_rows(out_dir / "plots" / "train.csv")]


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "model" / "model.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    ranks: int,
    overrides: list[str],
    corpus: Corpus,
    out: Path,
    checkpoints: Path,
    *,
    threads_per_rank: int = 1,
    scheme: str = "torchrun",
) -> list[subprocess.Popen]:
    """Start `ranks` processes of ``frontier train`` with a launcher's environment and these params.

    scheme "torchrun": RANK / WORLD_SIZE / LOCAL_RANK and MASTER_ADDR / MASTER_PORT, as torchrun and the
    deepspeed launcher set them; "slurm" and "openmpi": only what srun / mpirun set (no MASTER_*).
    """
    port = free_port()
    while not 20000 <= port < 60000:  # the schedulers' derived port lies in that range
        port = free_port()
    params_file = dump_resolved(load_params(None, overrides), out.parent / f"{out.name}.params")
    procs = []
    for rank in range(ranks):
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
        }
        env["PYTHONPATH"] = str(REPO)
        if scheme == "torchrun":
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(ranks),
                       LOCAL_RANK=str(rank))  # fmt: skip
        elif scheme == "slurm":  # srun on one node called "localhost"; the job id fixes the port
            env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(ranks), SLURM_LOCALID=str(rank),
                       SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=str(port - 20000), SLURM_STEP_ID="0")  # fmt: skip
        elif scheme == "openmpi":
            env.update(OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE=str(ranks),
                       OMPI_COMM_WORLD_LOCAL_RANK=str(rank), OMPI_COMM_WORLD_LOCAL_SIZE=str(ranks),
                       OMPI_MCA_ess_base_jobid=str(port - 20000))  # fmt: skip
        else:
            raise ValueError(scheme)
        env["OMP_NUM_THREADS"] = str(threads_per_rank)  # as the in-process runs (tests/train/conftest.py)
        cmd = [sys.executable, "-m", "frontier", "train", "--params", str(params_file), "--data", str(corpus.tokens),
               "--tokenizer", str(corpus.tokenizer), "--out", str(out), "--checkpoints", str(checkpoints)]  # fmt: skip
        log = open(out.parent / f"{out.name}.rank{rank}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    return procs


def stage(
    overrides: list[str], corpus: Corpus, out: Path, checkpoints: Path, *, log_name: str | None = None
) -> subprocess.Popen:
    """``frontier train`` as a user (or a Snakemake rule) runs it: no launcher in the environment, so the
    stage starts the ranks its launch: params ask for. Output in ``<out>.<log_name or 'stage'>.log``."""
    params_file = dump_resolved(load_params(None, overrides), out.parent / f"{out.name}.{log_name or 'stage'}.params")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                             "LOCAL_RANK", "OMP_NUM_THREADS")}  # fmt: skip
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "frontier", "train", "--params", str(params_file), "--data", str(corpus.tokens),
           "--tokenizer", str(corpus.tokenizer), "--out", str(out), "--checkpoints", str(checkpoints)]  # fmt: skip
    log = open(out.parent / f"{out.name}.{log_name or 'stage'}.log", "w")  # noqa: SIM115 (closed with the process)
    # SIGHUP at its default, as a terminal session starts the stage, whatever the test runner inherited (nohup)
    hup_default = lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=hup_default)


def stage_log(out: Path, log_name: str | None = None) -> str:
    """The whole output of a `stage` run (ranks included)."""
    path = out.parent / f"{out.name}.{log_name or 'stage'}.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process under it (a stage and the ranks it started)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    proc.kill()


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, output: Callable[[], str],
             timeout: float = 240) -> None:  # fmt: skip
    """Poll until `predicate()` holds; fail (with the process's `output()`) if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before it could be interrupted:\n{output()[-4000:]}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail("timed out waiting for the run to make progress")
        time.sleep(0.01)


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def log_tail(out: Path, rank: int = 0, chars: int = 3000) -> str:
    path = out.parent / f"{out.name}.rank{rank}.log"
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def assert_same_run(expected_dir, got_dir, steps: int = 3):
    """Same per-step loss and grad norm (fp32 summation order aside), same weights.

    The grad norm catches a wrong overall gradient scale, which Adam's update would hide. Weights get
    atol 1e-5 against Adam steps of ~1e-2: an element whose gradient is ~0 moves by lr x m/sqrt(v),
    which turns 1e-7 differences in summation order into ~1e-6 differences in the weight.
    """
    expected, got = read_rows(expected_dir / "plots" / "train.csv"), read_rows(got_dir / "plots" / "train.csv")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [float(i) for i in range(1, steps + 1)]
    for a, b in zip(expected, got):
        for key in ("loss", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, expected, got)
    w1, w2 = weights(expected_dir), weights(got_dir)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
