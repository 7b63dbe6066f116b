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
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: frontier is imported from this checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the environment switches above)

# name -> (params file, vocabulary size). The char tokenizer of shakespeare_char gives 65 characters
# plus its 4 specials (pad, bos, eos, unk); the default pipeline's BPE has tokenizer.vocab_size entries.
CONFIGS: dict[str, tuple[Path, int | None]] = {
    "llama_default": (REPO / "params.yaml", None),
    "shakespeare_char": (REPO / "configs" / "shakespeare_char.yaml", 65 + 4),
}
VARIANTS = ("bare", "frontier", "ds_torch_adamw")
_PAD, _BOS, _EOS = 0, 1, 2  # frontier's own tokenizers put the specials first (frontier.data.tokenizer)


@dataclass
class Variant:
    name: str
    step: Callable[[int], object]  # runs global batch `step index` (mod the pool) through one optimizer step
    module: torch.nn.Module


@dataclass
class Case:
    name: str
    params: Any
    vocab_size: int
    seq_len: int
    micro_batch: int
    grad_accum: int


def load_case(name: str, overrides: Sequence[str] = ()) -> Case:
    from frontier.config import load_params
    from frontier.model.presets import resolve

    path, vocab = CONFIGS[name]
    params = load_params(path, list(overrides))
    cfg = params.train
    if cfg.micro_batch_size == "auto":  # the variants must step the same fixed batch
        raise SystemExit(
            f"{path}: train.micro_batch_size: auto: this benchmark times a fixed micro-batch; "
            "pass --set train.micro_batch_size=N"
        )
    return Case(
        name=name,
        params=params,
        vocab_size=vocab or params.tokenizer.vocab_size,
        seq_len=cfg.seq_len or resolve(params.model).max_seq_len,
        micro_batch=cfg.micro_batch_size,
        grad_accum=cfg.grad_accum_steps,
    )


def make_batches(case: Case, count: int, seed: int = 0) -> list[list[Any]]:
    """`count` global batches (each a list of grad_accum micro-batches) of random tokens, no padding."""
    from frontier.train.data import Batch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        micro = []
        for _ in range(case.grad_accum):
            window = torch.randint(3, case.vocab_size, (case.micro_batch, case.seq_len + 1), generator=gen)
            micro.append(Batch(input_ids=window[:, :-1].contiguous(), targets=window[:, 1:].contiguous()))
        out.append(micro)
    return out


def _module(case: Case) -> torch.nn.Module:
    """The module the train stage hands to DeepSpeed, freshly initialised from the config's seed."""
    from frontier.model.build import build_model
    from frontier.model.loss import CausalLMWithLoss
    from frontier.train.run import _apply_kernels, seed_all

    seed_all(case.params.seed)  # every variant starts from the same weights
    lm = build_model(case.params.model, case.vocab_size, bos_id=_BOS, eos_id=_EOS, pad_id=_PAD)
    lm = _apply_kernels(lm, case.params)
    if getattr(case.params.train, "activation_checkpointing", False):  # as run.py does; off by default
        from frontier.model.checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(lm)
    module = CausalLMWithLoss(lm, case.params.kernels)
    module.train()
    return module


def _torch_adamw(module: torch.nn.Module, case: Case) -> torch.optim.Optimizer:
    """torch's AdamW over frontier's param groups (same decay split), fused where torch has it."""
    from frontier.train.optimizer import param_groups

    o = case.params.optimizer
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(module, o)]
    kwargs = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a torch without the fused CPU kernel
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


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
    from frontier.train.distributed import init_distributed
    from frontier.train.ds_config import build_ds_config
    from frontier.train.engine import make_engine
    from frontier.train.optimizer import build_client_optimizer
    from frontier.train.prefetch import load_step
    from frontier.train.schedule import LRSchedule
    from frontier.train.stability import NanGuard, StepGate
    from frontier.train.state import TrainerState
    from frontier.train.step import StepLog, run_step

    info = init_distributed()  # idempotent: one in-memory gloo group of one rank
    cfg = case.params.train
    module = _module(case)
    optimizer = _torch_adamw(module, case) if torch_optimizer else build_client_optimizer(module, case.params.optimizer)
    gate = StepGate(optimizer)
    engine = make_engine(module, optimizer, build_ds_config(cfg, info.world_size))
    schedule = LRSchedule(case.params.schedule, case.params.optimizer.lr, cfg.max_steps)
    guard = NanGuard(cfg.nan_guard)
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


def _device() -> torch.device:
    return torch.device("cuda" if os.environ.get("DS_ACCELERATOR") == "cuda" else "cpu")


def _sync() -> None:
    if _device().type == "cuda":
        torch.cuda.synchronize()


def _batch_to(batch: Any, device: torch.device) -> Any:
    import dataclasses

    moved = {f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
             if torch.is_tensor(getattr(batch, f.name))}  # fmt: skip
    return dataclasses.replace(batch, **moved)


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

    from frontier.train.distributed import init_distributed
    from frontier.train.ds_config import build_ds_config
    from frontier.train.engine import clip_whole_grads, make_engine, whole_grads
    from frontier.train.optimizer import build_client_optimizer
    from frontier.train.step import StepLog, StepResult

    info = init_distributed()
    module = _module(case)
    optimizer = build_client_optimizer(module, case.params.optimizer)
    engine = make_engine(module, optimizer, build_ds_config(case.params.train, info.world_size))
    bare_module = _module(case)
    torch_opt = _torch_adamw(bare_module, case)
    micro = batches[0]
    whole = whole_grads(engine)
    clip = whole.clip if whole is not None else case.params.train.grad_clip

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
