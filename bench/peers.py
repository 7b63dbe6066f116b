"""Frontier beside its peers, measured in one call on one machine (issue 15): a table of figures and ratios.

    python bench/peers.py --nanogpt DIR [--out bench/results] [--work runs/peers] [--quick]
        [--rows shakespeare llama llama_compiled] [--repeats 2] [--llama-steps 200] [--llama-warmup 20]

Rows (each side in a fresh process, its thread count set through OMP_NUM_THREADS before torch loads, and
pinned to that many CPUs, so worker pools that size themselves from the CPUs they see get that many too):

* shakespeare_char, 1 thread: bench/shakespeare_char.py (Frontier's tokenizer, tokenize and train stages
  on nanoGPT's split of tinyshakespeare.txt, configs/shakespeare_char.yaml) against nanoGPT's own
  data/shakespeare_char/prepare.py + train.py with its README's CPU settings (bench/peers_nanogpt.py).
  Figures: the whole run's wall clock from start to exit (targets: Frontier <= 0.8x nanoGPT's) and the
  best val loss (target: Frontier <= 1.88). The whole run is, for Frontier, the one script's process
  (split, tokenizer, tokenize, train with its evals and checkpoints); for nanoGPT, prepare.py's and
  train.py's processes (train.py's evals and checkpoints included). nanoGPT's prepare.py writes its
  input.txt / train.bin / val.bin / meta.pkl into the checkout given. Without --nanogpt only Frontier's
  figures are measured.
* Llama default, 2 threads: tokens/s of Frontier's train stage against transformers.Trainer on the same
  model, tokens and batches (bench/peers_llama.py), eager and compiled (Frontier engine.compile, Trainer
  torch_compile); target Frontier >= 1.3x. The tokens are made here by Frontier's prepare, tokenizer
  and tokenize stages from a small standard-library corpus (prepare.max_docs).
  Each pair runs --repeats times in alternating order (F H, H F, ...); the figure is the median.

Writes <out>/peers-<UTC date>.json and .md (peers-quick-... with --quick: rehearsal settings, minutes
not hours, figures meaningless) with the machine's facts. Exit code 0 when every row was measured (or
skipped for a stated reason), 1 when one failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # the sibling modules, whether run as a script or loaded by a test
    sys.path.insert(0, str(BENCH))

import peers_nanogpt  # noqa: E402
from peers_proc import child_env, cpu_set, tail, timed  # noqa: E402

SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
SHAKESPEARE_PARAMS = REPO / "configs" / "shakespeare_char.yaml"
LLAMA_PARAMS = REPO / "params.yaml"
ROWS = ("shakespeare", "llama", "llama_compiled")
TARGET_WALL_RATIO = 0.8
TARGET_VAL = 1.88
TARGET_TPS_RATIO = 1.3
# What each figure is (printed in the Markdown beside the table)
METHOD = (
    "shakespeare_char wall: seconds from a process's start to its exit; Frontier: bench/shakespeare_char.py "
    "(split, tokenizer, tokenize, train with evals and checkpoints); nanoGPT: data/shakespeare_char/prepare.py "
    "+ train.py (its evals and checkpoints included).",
    "shakespeare_char best val loss: Frontier's best eval over train.eval_batches fixed val batches; nanoGPT's "
    "lowest printed val loss (eval_iters random batches per eval, iter 0 included).",
    "Llama tokens/s: timed steps x tokens per step / seconds from the end of the last warm-up step to the end "
    "of the last timed step, everything either loop does between optimizer steps included; one untimed step "
    "follows (the end-of-run save). The median over --repeats processes per side, run in alternating order. "
    "Frontier's own figure (step time only, warm-up included) is in the JSON as frontier_reported_tokens_per_s.",
)
# --quick: a rehearsal that proves every path runs; the figures mean nothing
QUICK_SHAKESPEARE = {"steps": 20, "warmup": 5, "eval_every": 10, "eval_batches": 2}
QUICK_LLAMA = {"warmup": 1, "steps": 2, "docs": 40, "repeats": 1}


# -- shakespeare_char --------------------------------------------------------------------------------


def shakespeare_overrides(quick: Mapping[str, int] | None) -> list[str]:
    if not quick:
        return []
    return [f"train.max_steps={quick['steps']}", f"schedule.warmup_steps={quick['warmup']}",
            f"train.eval_every={quick['eval_every']}", f"train.eval_batches={quick['eval_batches']}",
            f"train.checkpoint.every_steps={quick['steps']}"]  # fmt: skip


def frontier_shakespeare(data: Path, work: Path, quick: Mapping[str, int] | None) -> dict[str, Any]:
    """bench/shakespeare_char.py from a fresh work dir, 1 thread; its report plus the whole run's wall clock."""
    cmd = [sys.executable, str(BENCH / "shakespeare_char.py"), "--data", str(data), "--work", str(work), "--fresh"]
    for item in shakespeare_overrides(quick):
        cmd += ["--set", item]
    log, cpus = work.parent / "frontier_shakespeare.log", cpu_set(1)
    wall = timed(cmd, child_env(1), log, cpus=cpus, ok=(0, 1))  # 1: ran, target missed (or an uncaught error)
    if not (work / "report.json").is_file():
        raise RuntimeError(f"bench/shakespeare_char.py wrote no report; {tail(log)}")
    report = json.loads((work / "report.json").read_text())
    return {**report, "wall_s": wall, "omp_num_threads": "1", "cpus": cpus}


def nanogpt_shakespeare(checkout: Path, data: Path, work: Path, quick: Mapping[str, int] | None) -> dict[str, Any]:
    """nanoGPT's prepare.py + train.py, 1 thread; its settings compared with Frontier's params."""
    from frontier.config import load_params

    env, cpus = child_env(1), cpu_set(1)
    result = peers_nanogpt.run(checkout, data, work, env, quick=quick, cpus=cpus)
    probe = work / "threads.log"
    timed([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env, probe, cpus=cpus)
    # train.py sets no count (set_num_threads_calls is empty): what torch picks in the same environment is its count
    threads = int(probe.read_text().strip())
    result.update(torch_threads=None if result["set_num_threads_calls"] else threads, omp_num_threads="1", cpus=cpus)
    if result["recorded"]:
        params = load_params(SHAKESPEARE_PARAMS, shakespeare_overrides(quick))
        result["config_check"] = peers_nanogpt.compare_config(result["recorded"], params, checkout)
    return result


# -- Llama default -----------------------------------------------------------------------------------


def llama_data(work: Path, docs: int) -> tuple[Path, Path]:
    """prepared -> tokenizer -> tokens with Frontier's stage commands (bench/gpu/run.sh phase_data)."""
    shutil.rmtree(work, ignore_errors=True)
    sets = ["--params", str(LLAMA_PARAMS), "--set", f"prepare.max_docs={docs}"]
    env, cpus = child_env(2), cpu_set(2)
    frontier = [sys.executable, "-m", "frontier"]
    timed([*frontier, "prepare", *sets, "--out", str(work / "prepared")], env, work / "prepare.log", cpus=cpus)
    timed([*frontier, "tokenizer", *sets, "--data", str(work / "prepared"), "--out", str(work / "tokenizer")], env,
          work / "tokenizer.log", cpus=cpus)  # fmt: skip
    timed([*frontier, "tokenize", *sets, "--data", str(work / "prepared"), "--tokenizer", str(work / "tokenizer"),
           "--out", str(work / "tokens")], env, work / "tokenize.log", cpus=cpus)  # fmt: skip
    return work / "tokens", work / "tokenizer"


def llama_side(side: str, tokens: Path, tokenizer: Path, work: Path, *, warmup: int, steps: int, compile: bool,
               overrides: Sequence[str], profile_steps: int = 0) -> dict[str, Any]:  # fmt: skip
    out = work / "row.json"
    cmd = [sys.executable, str(BENCH / "peers_llama.py"), side, "--params", str(LLAMA_PARAMS), "--tokens", str(tokens),
           "--tokenizer", str(tokenizer), "--work", str(work), "--warmup", str(warmup), "--steps", str(steps),
           "--profile-steps", str(profile_steps), "--json", str(out)]  # fmt: skip
    for item in overrides:
        cmd += ["--set", item]
    if compile:
        cmd.append("--compile")
    shutil.rmtree(work, ignore_errors=True)
    cpus = cpu_set(2)
    wall = timed(cmd, child_env(2), work.parent / f"{work.name}.log", cpus=cpus)
    return {**json.loads(out.read_text()), "process_wall_s": wall, "cpus": cpus}


def llama_pair(tokens: Path, tokenizer: Path, work: Path, *, compile: bool, warmup: int, steps: int, repeats: int,
               overrides: Sequence[str], sides: Sequence[str] = ("frontier", "hf"),
               profile_steps: int = 0) -> dict[str, Any]:  # fmt: skip
    """Frontier and the Trainer, `repeats` times in alternating order; the median tokens/s of each."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            tag = f"{side}{'_compiled' if compile else ''}_{r}"
            runs[side].append(llama_side(side, tokens, tokenizer, work / tag, warmup=warmup, steps=steps,
                                         compile=compile, overrides=overrides,
                                         profile_steps=profile_steps if r == 0 else 0))  # fmt: skip
    return {side: {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs), "runs": rs}
            for side, rs in runs.items()}  # fmt: skip


# -- the table ---------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per target: Frontier's figure, the peer's, Frontier / peer, the target and whether it is met."""
    rows: list[dict[str, Any]] = []
    sh = results.get("shakespeare")
    if sh is not None:
        fr, nano, why = sh.get("frontier"), sh.get("nanogpt"), sh.get("nanogpt_skipped") or sh.get("error")
        f_wall = fr["wall_s"] if fr else None
        n_wall = nano["wall_s"] if nano else None
        ratio = _ratio(f_wall, n_wall)
        rows.append({"row": "shakespeare_char whole run wall s, 1 thread (vs nanoGPT)", "frontier": f_wall,
                     "peer": n_wall, "ratio": ratio, "target": f"ratio <= {TARGET_WALL_RATIO}",
                     "met": None if ratio is None else ratio <= TARGET_WALL_RATIO, "note": why})  # fmt: skip
        f_val = fr["best_val_loss"] if fr else None
        n_val = nano["best_val_loss"] if nano else None
        rows.append({"row": "shakespeare_char best val loss (vs nanoGPT)", "frontier": f_val, "peer": n_val,
                     "ratio": _ratio(f_val, n_val), "target": f"Frontier <= {TARGET_VAL}",
                     "met": None if f_val is None else f_val <= TARGET_VAL, "note": why})  # fmt: skip
    for key, label in (("llama", "eager"), ("llama_compiled", "compiled")):
        pair = results.get(key)
        if pair is None:
            continue
        f_tps = pair["frontier"]["tokens_per_s"] if "frontier" in pair else None
        h_tps = pair["hf"]["tokens_per_s"] if "hf" in pair else None
        ratio = _ratio(f_tps, h_tps)
        rows.append({"row": f"Llama default tokens/s, 2 threads, {label} (vs HF Trainer)", "frontier": f_tps,
                     "peer": h_tps, "ratio": ratio, "target": f"ratio >= {TARGET_TPS_RATIO}",
                     "met": None if ratio is None else ratio >= TARGET_TPS_RATIO,
                     "note": pair.get("unavailable") or pair.get("error")})  # fmt: skip
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "not available"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], markdown: bool = False) -> str:
    head = ["row", "Frontier", "peer", "ratio", "target", "met?"]
    body = [[r["row"], _fmt(r["frontier"]), _fmt(r["peer"]), _fmt(r["ratio"]), r["target"], _fmt(r["met"])]
            for r in rows]  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*b) for b in body])


def notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{r['row']}: {r['note'].splitlines()[0]}" for r in rows if r.get("note")]


# -- machine facts -----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def machine_facts() -> dict[str, Any]:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None) if Path("/proc/meminfo").is_file() else None  # fmt: skip
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1) if mem else None,
        "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: _version(name) for name in ("torch", "transformers", "deepspeed", "accelerate", "numpy")},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "threads": "OMP_NUM_THREADS and MKL_NUM_THREADS per row (1 for shakespeare_char, 2 for Llama), each "
                   "process pinned to as many CPUs (sched_setaffinity); each row reports torch.get_num_threads() as "
                   "its process saw it",
    }  # fmt: skip


# -- main --------------------------------------------------------------------------------------------


def _attempt(what: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """(fn's result, None), or (None, why) when it failed: a failed row is recorded and the others still run."""
    try:
        return fn(), None
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        print(f"{what}: failed: {exc}", file=sys.stderr)
        return None, str(exc)


def shakespeare_block(args: argparse.Namespace, quick: Mapping[str, int] | None) -> dict[str, Any]:
    work = args.work / "shakespeare"
    frontier, error = _attempt(
        "shakespeare frontier", lambda: frontier_shakespeare(args.data, work / "frontier", quick)
    )
    block: dict[str, Any] = {"frontier": frontier, "nanogpt": None}
    if error:
        block["error"] = error
    reason = peers_nanogpt.HOW_TO_GET if args.nanogpt is None else peers_nanogpt.missing(args.nanogpt)
    if reason:
        block["nanogpt_skipped"] = reason
        return block
    nano, error = _attempt("shakespeare nanoGPT",
                           lambda: nanogpt_shakespeare(args.nanogpt, args.data, work / "nanogpt", quick))  # fmt: skip
    block["nanogpt"] = nano
    if error:
        block["nanogpt_skipped"] = "failed: " + error
    return block


def llama_blocks(args: argparse.Namespace, wanted: Sequence[str], plan: Mapping[str, Any]) -> dict[str, Any]:
    """The token data once, then each wanted pair (eager, compiled)."""
    from peers_llama import compile_unavailable

    paths, error = _attempt("llama data", lambda: llama_data(args.work / "llama_data", plan["docs"]))
    out: dict[str, Any] = {}
    for key in wanted:
        if paths is None:
            out[key] = {"error": f"the token data: {error}"}
            continue
        compile = key == "llama_compiled"
        why = compile_unavailable() if compile else None
        # without Frontier's compile the Trainer's compiled figure is still measured; the row says why
        pair, error = _attempt(key, partial(
            llama_pair, *paths, args.work / key, compile=compile, warmup=plan["warmup_steps"],
            steps=plan["timed_steps"], repeats=plan["repeats"], overrides=plan["overrides"],
            sides=("hf",) if why else ("frontier", "hf"), profile_steps=plan["profile_steps"],
        ))  # fmt: skip
        out[key] = pair if pair is not None else {"error": error}
        if why:
            out[key]["unavailable"] = f"Frontier compiled: {why}"
    return out


def schedule_fit(params_path: Path, total_steps: int) -> list[str]:
    """The override that fits the lr warm-up into a run of `total_steps` (none when it fits already)."""
    from frontier.config import load_params

    warmup = load_params(params_path).schedule.warmup_steps
    return [] if warmup <= total_steps else [f"schedule.warmup_steps={total_steps}"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested row, in order; returns the report (meta, settings, results, table)."""
    quick_sh = QUICK_SHAKESPEARE if args.quick else None
    q = QUICK_LLAMA
    warmup = q["warmup"] if args.quick else args.llama_warmup
    plan = {
        "warmup_steps": warmup,
        "timed_steps": q["steps"] if args.quick else args.llama_steps,
        "docs": q["docs"] if args.quick else args.llama_docs,
        "repeats": q["repeats"] if args.quick else args.repeats,
        "profile_steps": min(args.profile_steps, 1) if args.quick else args.profile_steps,
    }
    total = plan["warmup_steps"] + plan["timed_steps"] + plan["profile_steps"] + 1
    plan["overrides"] = schedule_fit(LLAMA_PARAMS, total)
    meta = machine_facts()
    settings = {"quick": args.quick, "rows": list(args.rows), "shakespeare_quick": quick_sh, "llama": plan,
                "nanogpt": str(args.nanogpt) if args.nanogpt else None, "method": list(METHOD)}  # fmt: skip
    results: dict[str, Any] = {}
    if "shakespeare" in args.rows:
        results["shakespeare"] = shakespeare_block(args, quick_sh)
    wanted = [k for k in ("llama", "llama_compiled") if k in args.rows]
    if wanted:
        results.update(llama_blocks(args, wanted, plan))
    meta["load_average_end"] = list(os.getloadavg())
    return {"meta": meta, "settings": settings, "results": results, "table": table(results)}


def run_sections(
    method: Sequence[str],
    meta: Mapping[str, Any],
    settings: Mapping[str, Any],
    results: Mapping[str, Any],
    keys: Sequence[str] = ("llama", "llama_compiled"),
) -> list[str]:
    """A report's closing markdown sections: how measured, the machine, the settings, and for the Llama-runner
    rows (`keys` of `results`) where a step's time goes and the threads each process saw."""
    lines = [
        "## How measured", "", *[f"- {m}" for m in method], "",
        "## Machine", "", *[f"- {k}: {v}" for k, v in meta.items()], "",
        "## Settings", "", "```json", json.dumps(settings, indent=2), "```",
    ]  # fmt: skip
    profiles = profile_report(results, keys=keys)
    if profiles:
        lines += ["", "## Where a step's time goes (torch.profiler, CPU self time, steps after the timed ones)", "",
                  *profiles]  # fmt: skip
    threads = thread_report(results, keys=keys)
    if threads:
        lines += ["", "## Threads (as each process saw them)", "", *[f"- {t}" for t in threads]]
    return lines


def check_counts(parser: argparse.ArgumentParser, counts: Mapping[str, int], profile_steps: int) -> None:
    """parser.error naming the first count flag below 1 (or a negative --profile-steps)."""
    bad = [f"{flag} {value}" for flag, value in counts.items() if value < 1]
    if bad or profile_steps < 0:
        parser.error(f"{', '.join(bad) or f'--profile-steps {profile_steps}'}: expected at least 1 "
                     "(--profile-steps at least 0)")  # fmt: skip


def write_report(out: Path, stem: str, report: Mapping[str, Any], text: str) -> None:
    """`stem`.json (the report) and `stem`.md (`text`) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(text)


def pair_markdown(
    report: Mapping[str, Any], title: str, ratio_line: str, side_lines: Callable[[Any], list[str]],
    method: Sequence[str], row: str,
) -> str:  # fmt: skip
    """A two-sided bench's report (one `row` of results, e.g. Frontier beside one peer): the title with the date
    (and a --quick warning), the ratio line, each side's table, then run_sections."""
    meta, settings = report["meta"], report["settings"]
    pair = report["results"][row]
    quick = ", --quick rehearsal: figures meaningless" if settings["quick"] else ""
    lines = [
        f"# {title} ({meta['date_utc']}{quick})", "", ratio_line, "",
        *(side_lines(pair) if "error" not in pair else [f"Failed: {pair['error']}"]), "",
        *run_sections(method, meta, settings, report["results"], keys=(row,)),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def markdown(report: Mapping[str, Any]) -> str:
    meta, settings = report["meta"], report["settings"]
    lines = [
        f"# Frontier vs peers ({meta['date_utc']}{', --quick rehearsal: figures meaningless' if settings['quick'] else ''})",
        "",
        format_table(report["table"], markdown=True),
        "",
        *[f"- {n}" for n in notes(report["table"])],
        "",
        *run_sections(METHOD, meta, settings, report["results"]),
    ]
    check = ((report["results"].get("shakespeare") or {}).get("nanogpt") or {}).get("config_check")
    if check:
        lines += [
            "",
            "## nanoGPT's settings (its checkpoint) vs configs/shakespeare_char.yaml",
            "",
            "| setting | nanoGPT | Frontier | same | note |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {c['setting']} | {c['nanogpt']} | {c['frontier']} | {_fmt(c['same'])} | {c['note']} |"
                  for c in check]  # fmt: skip
    return "\n".join(lines) + "\n"


def profile_report(
    results: Mapping[str, Any], top: int = 6, keys: Sequence[str] = ("llama", "llama_compiled")
) -> list[str]:
    """Per Llama row (`keys` of `results`) and side (its first process): ms per step, matmul and attention
    shares, the top ops."""
    out = []
    for key in keys:
        for side, pair in (results.get(key) or {}).items():
            prof = (pair.get("runs") or [{}])[0].get("profile") if isinstance(pair, dict) else None
            if not prof:
                continue
            ops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in prof["top"][:top])
            out.append(f"- {key} {side}: {prof['self_ms_per_step']:.0f} ms a step over {prof['steps']} steps; "
                       f"matmuls {prof['matmul_share']:.0%}, attention {prof['attention_share']:.0%}; top: {ops}")  # fmt: skip
    return out


def thread_report(results: Mapping[str, Any], keys: Sequence[str] = ("llama", "llama_compiled")) -> list[str]:
    """OMP_NUM_THREADS and torch.get_num_threads() of every measured process (Llama rows: `keys` of `results`)."""
    out = []
    sh = results.get("shakespeare") or {}
    for side in ("frontier", "nanogpt"):
        row = sh.get(side)
        if row:
            out.append(f"shakespeare_char {side}: OMP_NUM_THREADS={row['omp_num_threads']}, "
                       f"torch threads {row.get('torch_threads')}, CPUs {row.get('cpus')}")  # fmt: skip
    for key in keys:
        for side, pair in (results.get(key) or {}).items():
            if isinstance(pair, dict) and "runs" in pair:
                seen = sorted({(r["omp_num_threads"], r["torch_threads"], str(r.get("cpus"))) for r in pair["runs"]})
                out.append(f"{key} {side}: (OMP_NUM_THREADS, torch threads, CPUs) {seen}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (without it: Frontier's rows only)")
    parser.add_argument("--data", type=Path, default=SHAKESPEARE, help="tinyshakespeare.txt")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "peers")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--quick", action="store_true", help="rehearsal: a few steps per row (about 2 minutes)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--repeats", type=int, default=2, help="Llama pairs, alternating order (median taken)")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=3,
        help="Llama steps profiled after the timed ones, first process of each side (0: none)",
    )
    parser.add_argument("--llama-warmup", type=int, default=20)
    parser.add_argument("--llama-steps", type=int, default=200)
    parser.add_argument("--llama-docs", type=int, default=300, help="prepare.max_docs of the Llama token data")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.llama_warmup < 1 or args.llama_steps < 1 or args.llama_docs < 1:
        parser.error("--repeats, --llama-warmup, --llama-steps and --llama-docs must be at least 1")
    if args.profile_steps < 0:
        parser.error("--profile-steps must be at least 0")
    if not args.data.is_file():
        parser.error(f"--data: {args.data} not found (tinyshakespeare.txt)")
    if args.nanogpt is None and "shakespeare" in args.rows:
        print(f"nanoGPT rows skipped: {peers_nanogpt.HOW_TO_GET}", file=sys.stderr)
    report = run(args)
    stem = f"peers-{'quick-' if args.quick else ''}{report['meta']['date_utc'][:10]}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(format_table(report["table"]))
    for line in notes(report["table"]):
        print("  " + line)
    for line in thread_report(report["results"]):
        print("  " + line)
    print(f"wrote {args.out / stem}.json and .md")
    failed = any(isinstance(v, dict) and "error" in v for v in report["results"].values())
    sh = report["results"].get("shakespeare") or {}
    failed |= bool(sh.get("error")) or str(sh.get("nanogpt_skipped", "")).startswith("failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
