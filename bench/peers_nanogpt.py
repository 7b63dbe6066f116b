"""nanoGPT's shakespeare_char CPU run, as its README gives it, from a local nanoGPT checkout (bench/peers.py).

nanoGPT is not part of this repository. Get a checkout of it yourself (e.g. `git clone` it, or
`git --git-dir=<a mirror> archive HEAD | tar -x -C DIR`) and pass its directory. Nothing is downloaded
here: data/shakespeare_char/prepare.py fetches input.txt only when it is missing, and this module
copies the local tinyshakespeare.txt there first.

Thread count: nanoGPT's train.py sets none, so torch takes OMP_NUM_THREADS from the environment;
`set_num_threads_calls` reports whether that is still true of the checkout given.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peers_proc import timed

# README.md, "I only have a macbook": the reference CPU run (val loss about 1.88)
README_CPU_ARGS = (
    "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
    "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
)  # fmt: skip
CONFIG = "config/train_shakespeare_char.py"
NEEDED = ("train.py", "model.py", "configurator.py", CONFIG, "data/shakespeare_char/prepare.py")
HOW_TO_GET = (
    "nanoGPT is not vendored: pass --nanogpt DIR, a checkout of https://github.com/karpathy/nanoGPT "
    "(git clone it, or from a local mirror: mkdir DIR && git --git-dir=MIRROR archive HEAD | tar -x -C DIR)"
)
_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.M)
_ITER = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms", re.M)


def missing(checkout: Path) -> str | None:
    """Why `checkout` cannot serve as nanoGPT (None when it can)."""
    absent = [name for name in NEEDED if not (checkout / name).is_file()]
    if absent:
        return f"{checkout} is not a nanoGPT checkout (missing {', '.join(absent)}). {HOW_TO_GET}"
    return None


def set_num_threads_calls(checkout: Path) -> list[str]:
    """Lines of train.py / model.py that set torch's thread count themselves (none in nanoGPT as published)."""
    hits = []
    for name in ("train.py", "model.py"):
        for n, line in enumerate((checkout / name).read_text(encoding="utf-8").splitlines(), 1):
            if "set_num_threads" in line or "set_num_interop_threads" in line:
                hits.append(f"{name}:{n}: {line.strip()}")
    return hits


def run_args(*, quick: Mapping[str, int] | None, out_dir: Path) -> list[str]:
    """train.py's arguments: the README's CPU run, shortened in rehearsals; out_dir always outside the checkout."""
    args = [CONFIG, *README_CPU_ARGS, f"--out_dir={out_dir}"]
    if quick:
        args += [
            f"--max_iters={quick['steps']}", f"--lr_decay_iters={quick['steps']}", f"--warmup_iters={quick['warmup']}",
            f"--eval_interval={quick['eval_every']}", f"--eval_iters={quick['eval_batches']}",
        ]  # fmt: skip
    return args


def parse_log(text: str) -> dict[str, Any]:
    """The evaluations and iterations train.py printed."""
    evals = [{"step": int(s), "train_loss": float(t), "val_loss": float(v)} for s, t, v in _EVAL.findall(text)]
    iters = [(int(i), float(loss), float(ms)) for i, loss, ms in _ITER.findall(text)]
    if not evals or not iters:
        raise RuntimeError("nanoGPT's log has no 'step N: ... val loss' or 'iter N: ...' lines")
    return {
        "evals": evals,
        "best_val_loss": min(e["val_loss"] for e in evals),
        "final_val_loss": evals[-1]["val_loss"],
        "iterations": len(iters),
        "final_train_loss": iters[-1][1],
        "median_iter_ms": sorted(ms for _, _, ms in iters)[len(iters) // 2],
    }


def recorded_config(out_dir: Path) -> dict[str, Any] | None:
    """The config and model_args that train.py stored in its checkpoint (written on each val improvement)."""
    import torch

    path = out_dir / "ckpt.pt"
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"config": ckpt["config"], "model_args": ckpt["model_args"]}


def run(
    checkout: Path, text: Path, work: Path, env: Mapping[str, str], *, quick: Mapping[str, int] | None,
    cpus: list[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """prepare.py then train.py, each timed from start to exit; the whole run's wall is their sum."""
    reason = missing(checkout)
    if reason:
        raise FileNotFoundError(reason)
    data_dir = checkout / "data" / "shakespeare_char"
    shutil.copyfile(text, data_dir / "input.txt")  # prepare.py downloads it otherwise
    work.mkdir(parents=True, exist_ok=True)
    out_dir = work / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    prepare_s = timed([sys.executable, "prepare.py"], env, work / "prepare.log", cwd=data_dir, cpus=cpus)
    train_s = timed([sys.executable, "train.py", *run_args(quick=quick, out_dir=out_dir)], env, work / "train.log",
                    cwd=checkout, cpus=cpus)  # fmt: skip
    result = parse_log((work / "train.log").read_text(encoding="utf-8"))
    return {
        **result,
        "wall_s": prepare_s + train_s,
        "prepare_s": prepare_s,
        "train_process_s": train_s,
        "recorded": recorded_config(out_dir),
        "set_num_threads_calls": set_num_threads_calls(checkout),
        "log": str(work / "train.log"),
    }


def _nano_activation(checkout: Path) -> str:
    """nanoGPT's MLP activation in transformers' ACT2FN names: its model.py uses nn.GELU() (exact, erf)."""
    source = (checkout / "model.py").read_text(encoding="utf-8")
    return "gelu" if "nn.GELU()" in source else "see model.py"


def compare_config(recorded: Mapping[str, Any], params: Any, checkout: Path) -> list[dict[str, Any]]:
    """nanoGPT's settings (as its checkpoint recorded them) beside Frontier's params, one row per setting.

    `same` is False where the two runs differ; `note` says what the difference means.
    """
    from frontier.model.build import hf_config

    c, m = recorded["config"], recorded["model_args"]
    t, e, o, s, md = params.train, params.engine, params.optimizer, params.schedule, params.model
    gpt2 = params.model.arch == "gpt2"
    act = getattr(hf_config(md, 1, bos_id=None, eos_id=None, pad_id=None), "activation_function", "silu")
    rows: list[tuple[str, Any, Any, str]] = [
        ("n_layer / model.num_layers", c["n_layer"], md.num_layers, ""),
        ("n_head / model.num_heads", c["n_head"], md.num_heads, ""),
        ("n_embd / model.hidden_size", c["n_embd"], md.hidden_size, ""),
        ("block_size / train.seq_len", c["block_size"], t.seq_len or md.max_seq_len, ""),
        ("block_size / model.max_seq_len", c["block_size"], md.max_seq_len, ""),
        ("batch_size / train.micro_batch_size", c["batch_size"], t.micro_batch_size, ""),
        ("gradient_accumulation_steps", c["gradient_accumulation_steps"], t.grad_accum_steps, ""),
        ("dropout / model.dropout", c["dropout"], md.dropout, ""),
        ("learning_rate / optimizer.lr", c["learning_rate"], o.lr, ""),
        ("min_lr / lr * schedule.min_lr_ratio", c["min_lr"], round(o.lr * s.min_lr_ratio, 12), ""),
        ("warmup_iters / schedule.warmup_steps", c["warmup_iters"], s.warmup_steps, ""),
        ("decay_lr / schedule.kind", "cosine" if c["decay_lr"] else "constant", s.kind, ""),
        ("lr_decay_iters / train.max_steps", c["lr_decay_iters"], t.max_steps, "Frontier decays over the whole run"),
        ("max_iters / train.max_steps", c["max_iters"], t.max_steps,
         "nanoGPT's loop steps at iter 0..max_iters: one optimizer step more than Frontier"),
        ("beta1", c["beta1"], o.beta1, ""),
        ("beta2", c["beta2"], o.beta2, ""),
        ("weight_decay", c["weight_decay"], o.weight_decay, ""),
        ("grad_clip", c["grad_clip"], e.grad_clip, ""),
        ("eval_interval / train.eval_every", c["eval_interval"], t.eval_every,
         "nanoGPT also evaluates at iter 0 (before training)"),
        ("eval_iters / train.eval_batches", c["eval_iters"], t.eval_batches,
         "nanoGPT: that many random batches of train and of val per eval (a noisy estimate, min taken over evals); "
         "Frontier: that many fixed val batches, no train eval"),
        ("bias (Linear and LayerNorm)", m["bias"], gpt2,
         "Frontier's gpt2 arch is transformers' GPT2 (biases everywhere): a few thousand parameters more"),
        ("MLP activation (transformers' ACT2FN name)", _nano_activation(checkout), act,
         "gelu: the exact erf GELU (model.mlp_activation: gelu); gelu_pytorch_tanh: GPT-2's tanh approximation"),
        ("vocab_size", m["vocab_size"], "65 + 4 specials (char tokenizer)" if gpt2 else "see tokenizer",
         "Frontier's char tokenizer adds pad/bos/eos/unk (never seen in the text)"),
        ("dtype on the CPU", f"{c['dtype']} requested; fp32 runs (train.py uses no autocast on cpu)", e.precision,
         ""),
        ("compile", c["compile"], e.compile, ""),
    ]  # fmt: skip
    out = []
    for name, nano, ours, note in rows:
        same = nano == ours if not isinstance(nano, float) else abs(nano - float(ours)) <= 1e-12 * max(1.0, abs(nano))
        if name.startswith("dtype"):
            same = e.precision == "fp32"
        out.append({"setting": name, "nanogpt": nano, "frontier": ours, "same": bool(same), "note": note})
    return out
