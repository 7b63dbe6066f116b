"""Where bench/train_step.py's variants spend their time: profiles of a few steps and isolated costs.

``torch_profile`` (ops, torch.profiler) and ``python_profile`` (functions, cProfile) measure one variant;
``diff`` ranks what a Frontier variant runs more of than the bare loop, ``cumulative`` where a step's time
goes top-down. ``probe_overheads`` times alone each piece the Frontier step runs and the bare loop does
not. deepspeed and frontier are imported inside the functions that need them (bench/train_step.py picks
DeepSpeed's accelerator before they load).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from train_step_case import REPO, Case, Variant, _module, _torch_adamw

# -- profiling ---------------------------------------------------------------------------------------


def torch_profile(variant: Variant, index: int, steps: int = 3) -> dict[str, dict[str, float]]:
    """Per op name: self CPU ms and calls per step (mean over `steps` steps)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(steps):
            variant.step(index + k)
    out: dict[str, dict[str, float]] = {}
    for evt in prof.key_averages():
        out[evt.key] = {"self_ms": evt.self_cpu_time_total / 1e3 / steps, "calls": evt.count / steps}
    return out


def python_profile(variant: Variant, index: int, steps: int = 3) -> dict[str, dict[str, Any]]:
    """Per Python function (file:line(name), repo-relative): self and cumulative ms and calls per step,
    and the caller that spends the most in it (cProfile).

    cProfile adds its own cost per call, so the absolute figures are inflated; the diff against the
    bare loop (same instrumentation) is what locates the extra Python work.
    """
    prof = cProfile.Profile()
    prof.enable()
    for k in range(steps):
        variant.step(index + k)
    prof.disable()
    stats = pstats.Stats(prof)
    out: dict[str, dict[str, Any]] = {}
    for func, (_cc, ncalls, tottime, cumtime, callers) in stats.stats.items():  # type: ignore[attr-defined]
        top = max(callers.items(), key=lambda kv: kv[1][3], default=None)
        out[_name(func)] = {
            "self_ms": tottime * 1e3 / steps,
            "cum_ms": cumtime * 1e3 / steps,
            "calls": ncalls / steps,
            "caller": _name(top[0]) if top else "",
        }
    return out


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    return f"{_short(filename)}:{line}({name})"


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def diff(prof: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """What the variant runs more often than the bare loop (or the bare loop never runs), ranked by the
    self time above the bare loop's: an op both run equally often differs only by noise, not by design."""
    rows = []
    for key, v in prof.items():
        b = base.get(key, {"self_ms": 0.0, "calls": 0.0})
        extra = v["self_ms"] - b["self_ms"]
        if extra > 0 and v["calls"] > b["calls"]:
            row = {"name": key, "extra_ms": round(extra, 4), "self_ms": round(v["self_ms"], 4),
                   "bare_ms": round(b["self_ms"], 4), "calls": v["calls"], "bare_calls": b["calls"]}  # fmt: skip
            if "cum_ms" in v:
                row.update(cum_ms=round(v["cum_ms"], 4), caller=v["caller"])
            rows.append(row)
    rows.sort(key=lambda r: -r["extra_ms"])
    return rows[:top]


def cumulative(prof: dict[str, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The functions with the most cumulative time per step (where a step's time goes, top-down)."""
    rows = [{"name": k, "cum_ms": round(v["cum_ms"], 3), "self_ms": round(v["self_ms"], 3), "calls": v["calls"]}
            for k, v in prof.items()]  # fmt: skip
    rows.sort(key=lambda r: -r["cum_ms"])
    return rows[:top]


# -- isolated costs ----------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # first call: allocations, lazy state
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def probe_overheads(case: Case, batches: list[list[Any]], reps: int = 20) -> dict[str, float]:
    """Median ms of each piece the Frontier step runs and the bare loop does not, timed alone on real grads.

    The profiler diff says which pieces exist; these figures say what removing each would save per step
    (the interleaved step medians are too noisy on a 2-core machine to resolve a few ms apiece).
    """
    from deepspeed.runtime.utils import clip_grad_norm_ as ds_clip_grad_norm_

    from frontier.train.engine.ds_config import build_ds_config
    from frontier.train.engine.engine import clip_whole_grads, make_engine, whole_grads
    from frontier.train.engine.optimizer import build_client_optimizer
    from frontier.train.engine.step import StepLog, StepResult
    from frontier.train.launch.distributed import init_distributed

    info = init_distributed()
    module = _module(case)
    optimizer = build_client_optimizer(module, case.params.optimizer)
    ds_config = build_ds_config(case.params.engine, info.world_size, micro_batch_size=case.micro_batch,
                                grad_accum_steps=case.grad_accum)  # fmt: skip
    engine = make_engine(module, optimizer, ds_config)
    bare_module = _module(case)
    torch_opt = _torch_adamw(bare_module, case)
    micro = batches[0]
    whole = whole_grads(engine)
    clip = whole.clip if whole is not None else case.params.engine.grad_clip

    def grads() -> None:  # real gradients of one step on both models (no optimizer update)
        for m in (module, bare_module):
            m.zero_grad(set_to_none=True)
            for b in micro:
                m(b.input_ids, b.targets).backward()

    grads()
    log = StepLog(info.device)
    one = torch.ones((), dtype=torch.float64)
    result = StepResult(loss=one, targets=1.0, grad_norm=one, skipped=one * 0)
    out = {
        "StepLog.add (train_one_step, every step)": _median_ms(lambda: log.add(result), reps),
        "StepLog.add + read, a 1-step window (settle: log steps only)": _median_ms(
            lambda: (log.add(result), log.read()), reps
        ),
        "Batch.num_targets per micro-batch (prefetch thread)": _median_ms(lambda: [b.num_targets for b in micro], reps),
        # clip=0 would let the norm alone be timed; the run clips, so this is norm + clip
        "clip_whole_grads: norm + clip, foreach (engine.py; ZeRO-0 fp32)": _median_ms(
            lambda: clip_whole_grads(whole) if whole is not None else None, reps
        ),
        # what the step no longer runs at ZeRO-0 fp32 on one rank, for comparison (grads are rescaled by
        # at most the clip coefficient between calls: the costs do not depend on the values)
        "no longer run: DeepSpeed allreduce_gradients, 1 rank": _median_ms(engine.allreduce_gradients, reps),
        "no longer run: DeepSpeed clip_fp32_gradients": _median_ms(
            lambda: ds_clip_grad_norm_(parameters=engine.module.parameters(), max_norm=clip, mpu=engine.mpu), reps
        ),
    }
    # zero_grad drops the grads, so each timing needs fresh ones
    for label, zero in (
        ("engine.zero_grad (WholeGrads: stored param list)", engine.zero_grad),
        ("no longer run: DeepSpeed zero_grad (named_parameters walk)", lambda: type(engine).zero_grad(engine)),
    ):
        zg = []
        for _ in range(max(reps // 4, 3)):
            grads()
            t0 = time.perf_counter()
            zero()
            zg.append(time.perf_counter() - t0)
        out[label] = statistics.median(zg) * 1e3
    grads()
    # optimizer implementations on the same gradients (each updates its own copy of the weights)
    out["optimizer step: frontier client optimizer"] = _median_ms(optimizer.step, reps)
    out["optimizer step: torch AdamW (bare loop's)"] = _median_ms(torch_opt.step, reps)
    return {k: round(v, 4) for k, v in out.items()}
