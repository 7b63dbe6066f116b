"""Continued pretraining of a ~100M-parameter Qwen2-shape checkpoint on the CPU: Frontier against transformers.Trainer.

    python bench/continued_pretraining.py [--out bench/results] [--work runs/continued_pretraining] [--quick]
        [--warmup 3] [--steps 10] [--repeats 2] [--profile-steps 2] [--docs 300]
        [--micro-batch 4] [--seq-len 256] [--grad-accum 1]

What it does, in one call on one machine:

1. The corpus: Frontier's prepare stage over the project's default corpus (this Python's standard library,
   prepare.max_docs = --docs).
2. The checkpoint: a random Qwen2-shape model laid out as a download (tests/model/families.py's
   build_checkpoint("qwen2"): transformers' Qwen2Config, hidden 768, 12 layers, 12 heads, 2 kv heads,
   intermediate 3072, tied embedding; sharded safetensors; its own small byte-level BPE tokenizer with
   Qwen's special tokens), about 102M parameters.
3. The user's continued-pretraining flow on it: the tokenizer stage with tokenizer.kind pretrained
   (tokenizer.path: the checkpoint), the tokenize stage, then the two sides, each in a fresh process with
   OMP_NUM_THREADS=2 pinned to 2 CPUs (bench/peers_llama.py, the same runner as bench/peers.py's Llama row):
   (a) Frontier's train stage (frontier.train.run.train, as `frontier train` calls it) with
       model.init_from = the checkpoint; (b) transformers.Trainer on AutoModelForCausalLM.from_pretrained of
       the same directory (SDPA attention, adamw_torch_fused, no eval, no saving, report_to none, dataloader
       workers 0), fed Frontier's own windows in the same order.
   Same micro batch, seq len, grad accumulation, fp32, AdamW lr/betas/eps/weight decay/clip and cosine schedule.

The figure per side is tokens/s over --steps steps after --warmup steps (startup, loading and warm-up
excluded), the median over --repeats processes run in alternating order; the ratio is Frontier / Trainer.
With --profile-steps N each side's first process profiles N steps after the timed ones (torch.profiler).

Writes <out>/continued-pretraining-<UTC date>.json and .md (continued-pretraining-quick-... with --quick:
a toy model and a few steps, proving every path runs; its figures mean nothing). Exit code 0 when both
sides were measured, 1 when one failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # the sibling modules, whether run as a script or loaded by a test
    sys.path.insert(0, str(BENCH))
if str(REPO) not in sys.path:  # frontier from this checkout
    sys.path.insert(0, str(REPO))

import peers  # noqa: E402

PARAMS = peers.LLAMA_PARAMS  # params.yaml: the optimizer, schedule and engine both sides share
TARGET_RATIO = 1.0
ROW = "continued_pretraining"  # the key of the pair in the report's results
# The checkpoint's shape. Its vocabulary is small (families.py's tokenizer: ~660 tokens, 768 rows), so nearly
# every parameter is in the layers: intermediate 2048 would give ~74M, 3072 brings the model to ~102M.
FULL_SIZE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "num_kv_heads": 2, "intermediate_size": 3072,
             "max_position_embeddings": 1024}  # fmt: skip
QUICK_SIZE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
              "max_position_embeddings": 64}  # fmt: skip
QUICK = {"warmup": 1, "steps": 2, "repeats": 1, "profile_steps": 1, "docs": 12, "micro_batch": 2, "seq_len": 32,
         "grad_accum": 2}  # fmt: skip
EMBED_MULTIPLE = 128  # embedding rows, as Qwen pads its own (151,936 rows for a 151,665-token tokenizer)
THREADS = (
    "OMP_NUM_THREADS=2 and MKL_NUM_THREADS=2 in each side's process, pinned to 2 CPUs (sched_setaffinity); "
    "each run reports torch.get_num_threads() as its process saw it"
)
METHOD = (
    "tokens/s: timed steps x tokens per step / seconds from the end of the last warm-up step to the end of the "
    "last timed step, everything either loop does between optimizer steps included (bench/peers_llama.py); "
    "process start, imports, checkpoint loading and warm-up steps excluded. Median over --repeats processes per "
    "side, alternating order (F H, H F, ...). Ratio: Frontier's median / the Trainer's.",
    "data: the project's default corpus (this Python's standard library via the prepare stage), tokenized by "
    "the checkpoint's own tokenizer (tokenizer stage with kind pretrained, then the tokenize stage); both sides "
    "consume Frontier's sampler's windows in the same order, step by step.",
)


# -- the checkpoint and its data ---------------------------------------------------------------------


def _params(overrides: Sequence[str]) -> Any:
    from frontier.config import load_params

    return load_params(PARAMS, list(overrides))


def corpus(work: Path, docs: int) -> Path:
    """The prepare stage over the project's default corpus (this Python's standard library): the prepared dir."""
    from frontier.data.prepare import prepare

    prepare(_params([f"prepare.max_docs={docs}"]), work / "prepared")
    return work / "prepared"


def build_qwen2(out: Path, size: Mapping[str, int], *, seed: int = 0) -> Path:
    """A random Qwen2-shape checkpoint laid out as a download (tests/model/families.py: Qwen2Config, safetensors
    in at least 2 shards, a byte-level BPE tokenizer with Qwen's special tokens), its embedding padded to a
    multiple of EMBED_MULTIPLE rows."""
    from tests.model.families import build_checkpoint, build_tokenizer

    rows = len(build_tokenizer("qwen2"))
    extra = -rows % EMBED_MULTIPLE
    return build_checkpoint("qwen2", out, seed=seed, extra_rows=extra, size=dict(size))


def continued_tokens(prepared: Path, checkpoint: Path, work: Path) -> tuple[Path, Path]:
    """The user's flow for a released checkpoint: the tokenizer stage copies its tokenizer
    (tokenizer.kind pretrained), the tokenize stage packs the corpus with it: (tokens dir, tokenizer dir)."""
    from frontier.data.pack import tokenize
    from frontier.data.tokenizer import train_tokenizer

    params = _params(["tokenizer.kind=pretrained", f"tokenizer.path={checkpoint}"])
    train_tokenizer(params, prepared, work / "tokenizer")
    tokenize(params, prepared, work / "tokenizer", work / "tokens", workers=1)
    return work / "tokens", work / "tokenizer"


def parameter_count(checkpoint: Path) -> int:
    """Distinct parameters of the checkpoint (a tied embedding counted once), from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint, local_files_only=True))
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# -- the measurement ---------------------------------------------------------------------------------


def side_overrides(checkpoint: Path, plan: Mapping[str, int]) -> list[str]:
    """What both sides train with beyond params.yaml: the checkpoint, the batch, an lr warm-up that fits the
    shortest process (warm-up + timed + the final step: only each side's first process adds profiled steps)."""
    shortest = plan["warmup"] + plan["steps"] + 1
    return [f"model.init_from={checkpoint}", f"train.micro_batch_size={plan['micro_batch']}",
            f"train.grad_accum_steps={plan['grad_accum']}", f"train.seq_len={plan['seq_len']}",
            "engine.precision=fp32", *peers.schedule_fit(PARAMS, shortest)]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Data, checkpoint, both sides; the report (meta, settings, results, ratio)."""
    plan = {k: QUICK[k] if args.quick else getattr(args, k) for k in QUICK}
    size = QUICK_SIZE if args.quick else FULL_SIZE
    meta = {**peers.machine_facts(), "threads": THREADS}
    work = args.work
    for ours in ("data", "checkpoint"):  # a fresh run: no checkpoint or tokens of an earlier one are reused
        shutil.rmtree(work / ours, ignore_errors=True)
    prepared = corpus(work / "data", plan["docs"])
    checkpoint = build_qwen2(work / "checkpoint", size)
    tokens, tokenizer = continued_tokens(prepared, checkpoint, work / "data")
    overrides = side_overrides(checkpoint, plan)
    pair, error = peers._attempt("continued pretraining", lambda: peers.llama_pair(
        tokens, tokenizer, work / "sides", compile=False, warmup=plan["warmup"], steps=plan["steps"],
        repeats=plan["repeats"], overrides=overrides, profile_steps=plan["profile_steps"]))  # fmt: skip
    meta["load_average_end"] = list(os.getloadavg())
    f_tps = pair["frontier"]["tokens_per_s"] if pair else None
    h_tps = pair["hf"]["tokens_per_s"] if pair else None
    ratio = peers._ratio(f_tps, h_tps)
    return {
        "meta": meta,
        "settings": {"quick": args.quick, **plan, "model": {"family": "qwen2", **size},
                     "parameters": parameter_count(checkpoint), "overrides": overrides,
                     "method": list(METHOD)},  # fmt: skip
        "results": {ROW: pair if pair is not None else {"error": error}},
        "summary": {"frontier_tokens_per_s": f_tps, "hf_tokens_per_s": h_tps, "ratio": ratio,
                    "target": f"ratio >= {TARGET_RATIO}", "met": None if ratio is None else ratio >= TARGET_RATIO},
    }  # fmt: skip


# -- the report --------------------------------------------------------------------------------------


def side_lines(pair: Mapping[str, Any]) -> list[str]:
    """A Markdown table: each side's median tokens/s, its runs, tokens per step, parameters and last loss."""
    lines = ["| side | tokens/s (median) | runs (tokens/s) | tokens a step | parameters | last train loss |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for side, name in (("frontier", "Frontier (frontier.train.run.train)"), ("hf", "transformers.Trainer")):
        if side not in pair:
            continue
        runs = pair[side]["runs"]
        each = ", ".join(f"{r['tokens_per_s']:,.1f}" for r in runs)
        lines.append(f"| {name} | {pair[side]['tokens_per_s']:,.1f} | {each} | {runs[0]['step_tokens']} | "
                     f"{runs[0]['params']:,} | {runs[-1]['final_loss']:.4f} |")  # fmt: skip
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    settings, summary = report["settings"], report["summary"]
    title = (
        f"Continued pretraining, Qwen2-shape {settings['parameters']:,} parameters, CPU 2 threads: "
        "Frontier vs transformers.Trainer"
    )
    ratio = (f"Frontier / Trainer tokens/s: **{peers._fmt(summary['ratio'])}** (target {summary['target']}: "
             f"{peers._fmt(summary['met'])})")  # fmt: skip
    return peers.pair_markdown(report, title, ratio, side_lines, METHOD, ROW)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "continued_pretraining")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--quick", action="store_true", help="rehearsal: a toy model, a few steps (seconds)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="processes per side, alternating order (median)")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps profiled after the timed ones (0: none)")
    parser.add_argument("--docs", type=int, default=300, help="prepare.max_docs of the token data")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--grad-accum", type=int, default=1)
    args = parser.parse_args(argv)
    counts = {"--warmup": args.warmup, "--steps": args.steps, "--repeats": args.repeats, "--docs": args.docs,
              "--micro-batch": args.micro_batch, "--seq-len": args.seq_len, "--grad-accum": args.grad_accum}  # fmt: skip
    peers.check_counts(parser, counts, args.profile_steps)
    if not args.quick and args.seq_len > FULL_SIZE["max_position_embeddings"]:
        parser.error(f"--seq-len {args.seq_len}: the checkpoint's context is {FULL_SIZE['max_position_embeddings']}")
    report = run(args)
    stem = f"continued-pretraining-{'quick-' if args.quick else ''}{report['meta']['date_utc'][:10]}"
    peers.write_report(args.out, stem, report, markdown(report))
    summary = report["summary"]
    print(
        f"frontier {peers._fmt(summary['frontier_tokens_per_s'])} tokens/s, "
        f"hf trainer {peers._fmt(summary['hf_tokens_per_s'])} tokens/s, ratio {peers._fmt(summary['ratio'])}"
    )
    print(f"wrote {args.out / stem}.json and .md")
    return 1 if "error" in report["results"][ROW] else 0


if __name__ == "__main__":
    sys.exit(main())
