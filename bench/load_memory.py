"""Host memory of loading a user's checkpoint for a ZeRO-3 run: before (fp32 per rank) and after (frontier.model.load).

    python bench/load_memory.py [--ranks 2] [--checkpoint-dtype bf16] [--shard-size 200MB]
        [--json bench/results/load-memory.json] [--md bench/results/load-memory.md]

One call measures every side. It builds a ~300M-parameter random Qwen2-shaped checkpoint (hidden 1024, 24
layers, 16 heads / 2 KV heads, MLP 2816, 32k vocabulary, tied embeddings; sharded safetensors in
`--checkpoint-dtype`, bf16 by default as Hub checkpoints ship) in a temporary directory, then, for each side,
starts `--ranks` CPU ranks (gloo; RANK / WORLD_SIZE / MASTER_* as torchrun sets them) that each:

1. join the process group (frontier.train.launch.distributed.init_distributed), load a tiny checkpoint of
   the same family the side's way (so that the code and DeepSpeed's own state, which do not grow with the
   model, are in memory), then read their RSS: the ``baseline``; the peak (VmHWM) is reset to it;
2. load the checkpoint, the side's way, then read their peak RSS (VmHWM): the ``load`` peak;
3. put the model on a DeepSpeed engine (ZeRO-3, bf16, torch AdamW), then read the peak again: ``engine``.

Sides:

* ``old``: what frontier did before: ``from_pretrained(dtype=float32)`` on every rank, whole, and
  deepspeed.initialize partitions it afterwards;
* ``hf_zero3``: transformers' own ZeRO-3 route (HfDeepSpeedConfig + from_pretrained): built under zero.Init, but
  rank 0 reads every shard into one state dict first;
* ``new``: frontier.model.load.load_causal_lm with the run's ZeRO-3 construction config (bf16): built under
  zero.Init, the shards read one tensor at a time into the partitions.

The figure is the node's peak: the sum of the ranks' peaks, as a ratio to the checkpoint's bytes on disk;
``above_baseline`` subtracts what the ranks held before loading (libraries, code), about the same on every side.
The engine peak adds DeepSpeed's fp32 master weights and the optimizer, the same bytes on every side.
``--mmap-threshold BYTES`` starts the ranks with glibc's MALLOC_MMAP_THRESHOLD_ fixed (an allocator setting a
job script can make): allocations above it are returned to the OS when freed, which shows how much of a peak
is heap fragmentation (freed tensors that glibc keeps) rather than live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SIDES = ("old", "hf_zero3", "new")
SHAPE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 2,
         "intermediate_size": 2816, "vocab_size": 32000, "max_position_embeddings": 4096,
         "tie_word_embeddings": True}  # fmt: skip
TINY = {
    **SHAPE,
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 256,
}  # fmt: skip  (the warm-up: the same family and code paths, no size)
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def _status() -> dict[str, int]:
    """This process's memory counters from /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


# -- one rank -------------------------------------------------------------------------------------


def _ds_config(world_size: int) -> dict[str, Any]:
    from frontier.config import load_params
    from frontier.train.engine.ds_config import build_ds_config

    engine = load_params(None, ["engine.zero_stage=3", "engine.precision=bf16"]).engine
    return build_ds_config(engine, world_size, micro_batch_size=1, grad_accum_steps=1)


def _load(side: str, checkpoint: Path, ds_config: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from frontier.model.load import load_causal_lm, zero3_construction

    if side == "old":
        return AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True, dtype=torch.float32)
    if side == "hf_zero3":
        with zero3_construction(ds_config):
            return AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True, dtype=torch.bfloat16)
    return load_causal_lm(checkpoint, dtype=torch.bfloat16, zero3_config=ds_config)


def rank_main(side: str, checkpoint: Path, warmup: Path, result: Path) -> None:
    import gc

    import deepspeed
    import torch

    from frontier.train.launch.distributed import init_distributed

    info = init_distributed()
    ds_config = _ds_config(info.world_size)
    _load(side, warmup, ds_config)  # dropped at once: only what stays of it counts
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the current RSS
    row: dict[str, Any] = {"rank": info.rank, "baseline": _status()}
    start = time.perf_counter()
    lm = _load(side, checkpoint, ds_config)
    row["load_s"] = time.perf_counter() - start
    row["load"] = _status()
    optimizer = torch.optim.AdamW([p for p in lm.parameters()], lr=1e-4)
    engine, *_ = deepspeed.initialize(model=lm, optimizer=optimizer, config=ds_config, dist_init_required=False)
    row["engine"] = _status()
    row["param_dtype"] = str(next(engine.module.parameters()).dtype)
    result.write_text(json.dumps(row))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # gloo's threads end before the interpreter does


# -- the driver -----------------------------------------------------------------------------------


def build_checkpoint(out: Path, dtype: str, shard_size: str, shape: dict[str, Any] = SHAPE) -> tuple[int, int]:
    """The random Qwen2-shaped checkpoint in `out`; (parameters, bytes of its safetensors files)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=getattr(torch, DTYPES[dtype]))
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), max_shard_size=shard_size)
    del model
    return n_params, sum(f.stat().st_size for f in out.glob("*.safetensors"))


def run_side(
    side: str, checkpoint: Path, ranks: int, work: Path, port: int, mmap_threshold: int | None
) -> list[dict[str, Any]]:
    procs = []
    for rank in range(ranks):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        if mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
        cmd = [sys.executable, __file__, "--rank-side", side, "--checkpoint", str(checkpoint),
               "--warmup", str(work / "tiny"), "--result", str(work / f"{side}.{rank}.json")]  # fmt: skip
        log = open(work / f"{side}.{rank}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=1800) for p in procs]
    if any(codes):
        tail = (work / f"{side}.0.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{side}: ranks exited {codes}\n{tail}")
    return [json.loads((work / f"{side}.{r}.json").read_text()) for r in range(ranks)]


def summarize(rows: list[dict[str, Any]], checkpoint_bytes: int) -> dict[str, Any]:
    """The node's figures: sums over the ranks, and ratios to the checkpoint's bytes."""
    baseline = sum(r["baseline"]["VmRSS"] for r in rows)
    load_peak = sum(r["load"]["VmHWM"] for r in rows)
    engine_peak = sum(r["engine"]["VmHWM"] for r in rows)
    return {
        "baseline_bytes": baseline,
        "load_peak_bytes": load_peak,
        "engine_peak_bytes": engine_peak,
        "load_peak_ratio": load_peak / checkpoint_bytes,
        "load_above_baseline_ratio": (load_peak - baseline) / checkpoint_bytes,
        "engine_peak_ratio": engine_peak / checkpoint_bytes,
        "engine_above_baseline_ratio": (engine_peak - baseline) / checkpoint_bytes,
        "load_s_max": max(r["load_s"] for r in rows),
        "param_dtype": rows[0]["param_dtype"],
        "ranks": rows,
    }


def machine() -> dict[str, Any]:
    import deepspeed
    import psutil
    import safetensors
    import torch
    import transformers

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "deepspeed": deepspeed.__version__, "safetensors": safetensors.__version__}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    gib = 2**30
    lines = [
        f"Checkpoint: {report['params'] / 1e6:.0f}M parameters, {report['checkpoint_dtype']} sharded safetensors "
        f"({report['shards']} shards of at most {report['shard_size']}), {report['checkpoint_bytes'] / gib:.2f} GiB; "
        f"{report['ranks_per_node']} CPU ranks (gloo) on one node.",
        "",
        "| side | weights | node baseline | node peak after load | x ckpt | above baseline x ckpt | "
        "node peak after engine | x ckpt | load s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for side, s in report["sides"].items():
        lines.append(
            f"| {side} | {s['param_dtype']} | {s['baseline_bytes'] / gib:.2f} GiB | {s['load_peak_bytes'] / gib:.2f} GiB "
            f"| {s['load_peak_ratio']:.2f} | {s['load_above_baseline_ratio']:.2f} | "
            f"{s['engine_peak_bytes'] / gib:.2f} GiB | {s['engine_peak_ratio']:.2f} | {s['load_s_max']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--checkpoint-dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--shard-size", default="200MB")
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--port", type=int, default=29571)
    ap.add_argument("--mmap-threshold", type=int, help="glibc MALLOC_MMAP_THRESHOLD_ for the ranks (bytes)")
    ap.add_argument("--rank-side", choices=SIDES, help=argparse.SUPPRESS)  # a rank of one side (internal)
    ap.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_side:
        rank_main(args.rank_side, args.checkpoint, args.warmup, args.result)
        return
    with tempfile.TemporaryDirectory(prefix="load_memory_") as tmp:
        work = Path(tmp)
        n_params, ckpt_bytes = build_checkpoint(work / "ckpt", args.checkpoint_dtype, args.shard_size)
        build_checkpoint(work / "tiny", args.checkpoint_dtype, args.shard_size, TINY)
        report: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "params": n_params,
            "checkpoint_dtype": args.checkpoint_dtype,
            "checkpoint_bytes": ckpt_bytes,
            "shard_size": args.shard_size,
            "shards": len(list((work / "ckpt").glob("*.safetensors"))),
            "ranks_per_node": args.ranks,
            "malloc_mmap_threshold": args.mmap_threshold,
            "sides": {},
        }
        for i, side in enumerate(args.sides):
            rows = run_side(side, work / "ckpt", args.ranks, work, args.port + i, args.mmap_threshold)
            report["sides"][side] = summarize(rows, ckpt_bytes)
            print(f"{side}: node load peak {report['sides'][side]['load_peak_ratio']:.2f}x the checkpoint", flush=True)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
