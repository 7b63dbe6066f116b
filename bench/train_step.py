"""Where does Frontier's training step lose time against a bare PyTorch loop? (issue 15, measuring half)

    python bench/train_step.py [--configs llama_default shakespeare_char] [--threads 1 2]
        [--steps 20 --rounds 6 --warmup 5] [--json bench/results/train_step.json] [--no-profile]
        [--device cuda]

For each config and thread count, the same model (frontier.model.build + kernels, as the train stage
builds it) is stepped on the same random token batches, fp32 on the CPU, by three variants:

* ``bare``: forward with loss, backward, torch.optim.AdamW (fused) step, zero_grad; nothing else;
* ``frontier``: the real step machinery: DeepSpeed engine (make_engine + build_ds_config) over
  frontier's client optimizer (build_client_optimizer) behind the StepGate, driven the way
  frontier.train.loop.Trainer drives one step (the lr set from the schedule, run_step with its
  finite checks, the step log read every ``train.log_every`` steps into the NaN guard and token
  counts; batches on the device with their target counts taken beforehand, as the prefetcher
  hands them over); no logging rows, eval or checkpoints;
* ``ds_torch_adamw``: the same engine and step with a plain torch AdamW (fused): separates the
  engine/step overhead from the optimizer implementation.

Variants run interleaved in one process (A/B/C then C/B/A rounds, so slow drift of the machine
cancels), each round timing ``--steps`` single steps; the figure is the median step. With
``--device cuda`` (DeepSpeed's CUDA accelerator, tensors on the GPU) a step is asynchronous, so a
sample is a whole round (its steps, then one synchronize) divided by its steps.

Each row also counts the variant's host reads per step (``host_reads_per_step``: Tensor.item /
__bool__ / __float__ / __int__ / tolist / numpy calls, each a device sync on a GPU, counted in the
calling thread by a TorchFunctionMode, plus DeepSpeed's accelerator ``synchronize`` calls, over one
``train.log_every`` window); ``host_reads`` lists where they come from. Then one
step of each variant (after the timing) runs under torch.profiler and cProfile, and the ops and
Python functions that the Frontier variants spend more self time in than the bare loop are listed.
Nothing here asserts on timings.

The case (config, model, batches) lives in bench/train_step_case.py, the profiles and isolated costs in
bench/train_step_profile.py; this file holds the variants, the timing, the host-read count and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# DeepSpeed picks its accelerator at import: the CPU path unless `--device cuda` asks for the GPU.
_CUDA = (
    __name__ == "__main__"
    and any(a in ("--device=cuda",) for a in sys.argv)
    or (
        __name__ == "__main__" and "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1 :][:1] == ["cuda"]
    )
)
os.environ.setdefault("DS_ACCELERATOR", "cuda" if _CUDA else "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (REPO, BENCH):  # run as a script from anywhere: frontier from this checkout, then the siblings
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402  (after the environment switches above)
from train_step_case import (  # noqa: E402
    CONFIGS,
    Case,
    Variant,
    _batch_to,
    _device,
    _module,
    _sync,
    _torch_adamw,
    load_case,
    make_batches,
)
from train_step_profile import _short, cumulative, diff, probe_overheads, python_profile, torch_profile  # noqa: E402

VARIANTS = ("bare", "frontier", "ds_torch_adamw")


def bare_variant(case: Case, batches: list[list[Any]]) -> Variant:
    module = _module(case).to(_device())
    opt = _torch_adamw(module, case)
    n_tokens = case.micro_batch * case.seq_len * case.grad_accum
    on_device = [[_batch_to(b, _device()) for b in micro] for micro in batches]

    def step(i: int) -> None:
        for b in on_device[i % len(on_device)]:
            loss = module(**b.model_inputs(_device())) / n_tokens  # the same summed loss, normalised
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Variant("bare", step, module)


def frontier_variant(case: Case, batches: list[list[Any]], *, torch_optimizer: bool) -> Variant:
    """Frontier's engine + step, driven as frontier.train.loop.Trainer._loop / train_one_step / settle do."""
    from frontier.train.batches.prefetch import load_step
    from frontier.train.checkpoint.state import TrainerState
    from frontier.train.engine.ds_config import build_ds_config
    from frontier.train.engine.engine import make_engine
    from frontier.train.engine.optimizer import build_client_optimizer
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.engine.stability import NanGuard, StepGate
    from frontier.train.engine.step import StepLog, run_step
    from frontier.train.launch.distributed import init_distributed

    info = init_distributed()  # idempotent: one in-memory gloo group of one rank
    cfg = case.params.train
    module = _module(case)
    optimizer = _torch_adamw(module, case) if torch_optimizer else build_client_optimizer(module, case.params.optimizer)
    gate = StepGate(optimizer)
    engine = make_engine(module, optimizer, build_ds_config(case.params.engine, info.world_size,
                                                           micro_batch_size=case.micro_batch,
                                                           grad_accum_steps=case.grad_accum))  # fmt: skip
    schedule = LRSchedule(case.params.schedule, case.params.optimizer.lr, cfg.max_steps)
    guard = NanGuard(case.params.engine.nan_guard)
    state = TrainerState(seed=case.params.seed, world_size=info.world_size)
    step_tokens = case.micro_batch * case.grad_accum * info.world_size * case.seq_len
    log = StepLog(info.device)
    # what the prefetcher hands over: the batches on the device, their target counts taken on the host
    ready = [load_step(lambda k: batches[k], k, info.device) for k in range(len(batches))]

    def step(i: int) -> None:
        # loop.py _loop: the stop / time-limit / checkpoint flags (one rank: decided on the host, no collective)
        # loop.py train_one_step: lr from the schedule, set on every param group
        lr = schedule(state.step) * state.lr_scale
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        got = ready[i % len(ready)]
        result = run_step(engine, got.batches, info, gate, got.targets)
        state.step += 1
        log.add(result)
        state.tokens += step_tokens
        if state.step % cfg.log_every == 0:  # loop.py settle: the one host read of a log window, then per step
            for r in log.read():
                guard.observe(state, r.finite)
                state.target_tokens += int(r.targets)

    return Variant("ds_torch_adamw" if torch_optimizer else "frontier", step, engine.module)


def build_variants(case: Case, batches: list[list[Any]], names: Sequence[str]) -> list[Variant]:
    makers: dict[str, Callable[[], Variant]] = {
        "bare": lambda: bare_variant(case, batches),
        "frontier": lambda: frontier_variant(case, batches, torch_optimizer=False),
        "ds_torch_adamw": lambda: frontier_variant(case, batches, torch_optimizer=True),
    }
    return [makers[n]() for n in names]


def time_interleaved(variants: list[Variant], *, steps: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step per variant; rounds alternate the order (A B C, C B A, ...).

    On the CPU every step is a sample; on CUDA a round is (its steps, then one synchronize), divided by its steps.
    """
    cuda = _device().type == "cuda"
    counter = {v.name: 0 for v in variants}
    for v in variants:  # warm-up: allocator, optimizer state creation, DeepSpeed's first-step work
        for _ in range(warmup):
            v.step(counter[v.name])
            counter[v.name] += 1
    _sync()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            t_round = time.perf_counter()
            for _ in range(steps):
                t0 = time.perf_counter()
                v.step(counter[v.name])
                if not cuda:
                    times[v.name].append(time.perf_counter() - t0)
                counter[v.name] += 1
            if cuda:
                _sync()
                times[v.name].append((time.perf_counter() - t_round) / steps)
    return times


_SYNC_CALLS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


def count_host_reads(variant: Variant, index: int, steps: int) -> tuple[float, dict[str, int]]:
    """Host reads of tensor values per step over `steps` steps, and their callers (file:line, repo-relative)."""
    from torch.overrides import TorchFunctionMode

    watched = {getattr(torch.Tensor, name) for name in _SYNC_CALLS}
    callers: dict[str, int] = {}

    class Count(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in watched:
                frame = sys._getframe(1)
                while frame.f_back is not None and "/torch/" in frame.f_code.co_filename:
                    frame = frame.f_back
                key = f"{func.__name__} <- {_short(frame.f_code.co_filename)}:{frame.f_lineno}"
                callers[key] = callers.get(key, 0) + 1
            return func(*args, **(kwargs or {}))

    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()  # DeepSpeed's own device synchronize calls (its throughput timer's, say)
    synchronize = accel.synchronize

    def counted_synchronize(*args: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        key = f"synchronize <- {_short(frame.f_code.co_filename)}:{frame.f_lineno}"
        callers[key] = callers.get(key, 0) + 1
        return synchronize(*args, **kwargs)

    accel.synchronize = counted_synchronize
    try:
        with Count():
            for k in range(steps):
                variant.step(index + k)
    finally:
        accel.synchronize = synchronize
    _sync()
    return sum(callers.values()) / steps, dict(sorted(callers.items(), key=lambda kv: -kv[1]))


# -- driver ------------------------------------------------------------------------------------------


def run(
    configs: Sequence[str] = ("llama_default", "shakespeare_char"),
    threads: Sequence[int] = (1, 2),
    *,
    steps: int = 20,
    rounds: int = 6,
    warmup: int = 5,
    variants: Sequence[str] = VARIANTS,
    overrides: Sequence[str] = (),
    profile: bool = True,
    profile_top: int = 15,
    profile_steps: int = 10,
) -> dict[str, Any]:
    """Measure every (config, threads) case; returns {"meta", "results", "profiles", "probes"} (JSON-ready).

    Profiles and probes (isolated costs) are taken at the first thread count only.
    """
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # as the train stage does (run.setup_logging)
    if "bare" not in variants:
        raise ValueError("variants must include 'bare' (every ratio is to it)")
    results: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    threads_before = torch.get_num_threads()  # a caller (pytest) keeps its own setting
    load_start, started = _loadavg(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        for name in configs:
            case = load_case(name, overrides)
            batches = make_batches(case, count=4)
            step_tokens = case.micro_batch * case.grad_accum * case.seq_len
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                built = build_variants(case, batches, variants)
                n_params = sum(p.numel() for p in {id(p): p for p in built[0].module.parameters()}.values())
                times = time_interleaved(built, steps=steps, rounds=rounds, warmup=warmup)
                bare_ms = statistics.median(times["bare"]) * 1e3
                done = warmup + rounds * steps
                window = max(case.params.train.log_every, 1)
                reads = {v.name: count_host_reads(v, done, window) for v in built}
                for v in built:
                    ms = statistics.median(times[v.name]) * 1e3
                    q1, _, q3 = statistics.quantiles(times[v.name], n=4) if len(times[v.name]) > 1 else (ms / 1e3,) * 3
                    results.append({
                        "config": name, "threads": n_threads, "variant": v.name, "params": n_params,
                        "tokens_per_step": step_tokens, "median_ms": round(ms, 3),
                        "iqr_ms": [round(q1 * 1e3, 3), round(q3 * 1e3, 3)], "ratio_to_bare": round(ms / bare_ms, 4),
                        "tokens_per_s": round(step_tokens / (ms / 1e3), 1), "n_steps": len(times[v.name]),
                        "host_reads_per_step": reads[v.name][0], "host_reads": reads[v.name][1],
                        "device": _device().type,
                    })  # fmt: skip
                if profile and n_threads == threads[0]:
                    probes.append({"config": name, "threads": n_threads, "ms": probe_overheads(case, batches)})
                    profiles.append(_profile_case(name, n_threads, built, done + window, profile_top, profile_steps))
    finally:
        torch.set_num_threads(threads_before)
    meta = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if _device().type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "loadavg_start": load_start,
        "steps": steps, "rounds": rounds, "warmup": warmup, "overrides": list(overrides),
        "started_utc": started,
    }  # fmt: skip
    return {"meta": meta, "results": results, "profiles": profiles, "probes": probes}


def _profile_case(name: str, n_threads: int, built: list[Variant], index: int, top: int, steps: int) -> dict[str, Any]:
    ops = {v.name: torch_profile(v, index, steps) for v in built}
    py = {v.name: python_profile(v, index + steps, steps) for v in built}
    entry: dict[str, Any] = {"config": name, "threads": n_threads, "per_variant_self_ms": {}}
    for v in built:
        entry["per_variant_self_ms"][v.name] = round(sum(e["self_ms"] for e in ops[v.name].values()), 3)
        entry[f"{v.name}_cumulative"] = cumulative(py[v.name], 3 * top)
        if v.name != "bare":
            entry[f"{v.name}_ops"] = diff(ops[v.name], ops["bare"], top)
            entry[f"{v.name}_python"] = diff(py[v.name], py["bare"], top)
    return entry


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def format_table(report: dict[str, Any]) -> str:
    lines = ["| config | threads | variant | median ms/step | IQR ms | vs bare | tokens/s | host reads/step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in report["results"]:
        lo, hi = r["iqr_ms"]
        lines.append(f"| {r['config']} | {r['threads']} | {r['variant']} | {r['median_ms']:.2f} | {lo:.2f}–{hi:.2f} "
                     f"| {r['ratio_to_bare']:.3f}× | {r['tokens_per_s']:,.0f} | {r['host_reads_per_step']:g} |")  # fmt: skip
    return "\n".join(lines)


def format_profiles(report: dict[str, Any], top: int = 10) -> str:
    out = []
    for r in report["results"]:
        if r.get("host_reads"):
            out.append(f"\n## {r['config']}, {r['threads']} thread(s), {r['variant']}: host reads per log window")
            out += [f"  {n:6d}  {where}" for where, n in r["host_reads"].items()]
    for p in report.get("probes", []):
        out.append(f"\n## {p['config']}, {p['threads']} thread(s): isolated costs, median ms")
        out += [f"  {ms:8.3f}  {name}" for name, ms in p["ms"].items()]
    for p in report["profiles"]:
        out.append(f"\n## {p['config']}, {p['threads']} thread(s): profiler self-CPU ms/step "
                   f"{json.dumps(p['per_variant_self_ms'])}")  # fmt: skip
        for key in sorted(k for k in p if k.endswith(("_ops", "_python")) and p[k]):
            out.append(f"\n### {key}: extra self ms/step over bare (calls/step vs bare)")
            for r in p[key][:top]:
                via = f"  <- {r['caller'][:70]}" if r.get("caller") else ""
                out.append(f"  {r['extra_ms']:8.3f}  {r['name'][:90]}  ({r['calls']:g} vs {r['bare_calls']:g}){via}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--top", type=int, default=15, help="profiler rows kept per variant")
    parser.add_argument("--profile-steps", type=int, default=10, help="steps profiled per variant")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: DeepSpeed's CUDA accelerator (read from the command line before importing it)")  # fmt: skip
    args = parser.parse_args(argv)
    report = run(args.configs, args.threads, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
                 variants=args.variants, overrides=args.overrides, profile=args.profile, profile_top=args.top,
                 profile_steps=args.profile_steps)  # fmt: skip
    report["meta"]["loadavg_end"] = _loadavg()
    print(format_table(report))
    if report["profiles"] or report["probes"]:
        print(format_profiles(report))
    print(f"\nload average at start {report['meta']['loadavg_start']}, at end {report['meta']['loadavg_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
