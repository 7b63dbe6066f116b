"""Chat SFT with packing on the CPU: Frontier's finetune stage against TRL's SFTTrainer, tokens/s (issue 27).

    python bench/sft_trl_speed.py [--out bench/results] [--work runs/sft_trl_speed] [--quick]
        [--warmup 2] [--steps 8] [--repeats 3] [--profile-steps 1] [--records 300]
        [--micro-batch 4] [--seq-len 512]

What it does, in one call on one machine:

1. The checkpoint: a random Llama 3 shape model laid out as a download (tests/model/families.py's
   build_checkpoint("llama3"): transformers' LlamaConfig, hidden 384, 8 layers, 6 heads, 2 kv heads, head_dim
   64, intermediate 1024, untied head; its own small byte-level BPE tokenizer with Llama 3's special tokens and
   chat template), about 13M parameters; nothing is downloaded.
2. The data: --records synthetic multi-turn chats (a system message on some, one to three user/assistant
   turns, answers of one to three sentences; seeded), each no longer than --seq-len tokens under the chat template
   (turns are dropped from the end of a longer one), and 8 held-out chats (Frontier scores them before and
   after; untimed).
3. The two sides, each in a fresh process with OMP_NUM_THREADS=2 pinned to 2 CPUs (bench/peers_proc.py):
   (a) Frontier's finetune stage (frontier.finetune.run.finetune, as `frontier finetune` calls it) with
       finetune.method full, finetune.packing true, finetune.max_seq_len = --seq-len, train_on all;
   (b) TRL's SFTTrainer on AutoModelForCausalLM.from_pretrained of the same directory (SDPA attention) with
       packing=True (its default strategy, best-fit decreasing, which makes it padding-free: a batch is one
       row of its packed sequences, position_ids restarting per chat), max_length = --seq-len; its other
       settings its defaults (optimizer, logging every 10 steps with its entropy and token-accuracy metrics)
       except no activation checkpointing (TRL turns it on by default; Frontier's engine has it off), fp32,
       no saving, no eval, report_to none, no tqdm.
   The same micro-batch (packed windows / packed bins a step), steps, fp32, AdamW lr / betas / eps / no weight
   decay, clip 1.0, a constant lr without warm-up; the loss on every token of each chat on both sides.

The figure per side is real tokens/s over --steps steps after --warmup steps (startup, loading, data
preparation and warm-up excluded): the tokens of the chats each step trains on (a chat of L tokens counts L;
padding never counts), summed over the timed steps, over the seconds from the end of the last warm-up step to
the end of the last timed step. The median over --repeats processes per side, run in alternating order; the
ratio is Frontier / TRL (issue 27's target: >= 1.3). With --profile-steps N each side's first process
profiles N steps after the timed ones (torch.profiler, CPU self time).

Writes <out>/sft-trl-speed-<UTC date>.json and .md (sft-trl-speed-quick-... with --quick: a toy model and a
few steps, proving every path runs; its figures mean nothing). Exit code 0 when both sides were measured, 1
when one failed.

One side alone (what the call above starts in each process):

    python bench/sft_trl_speed.py --side {frontier,trl} --plan PLAN.json --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # the sibling modules, whether run as a script or loaded by a test
    sys.path.insert(0, str(BENCH))
if str(REPO) not in sys.path:  # frontier from this checkout
    sys.path.insert(0, str(REPO))

PARAMS = REPO / "params.yaml"  # the optimizer and engine settings both sides share
TARGET_RATIO = 1.3
ROW = "sft_packing"
THREADS = 2
HELDOUT = 8
FULL_SIZE = {"hidden_size": 384, "num_layers": 8, "num_heads": 6, "num_kv_heads": 2, "head_dim": 64,
             "intermediate_size": 1024, "max_position_embeddings": 1024}  # fmt: skip
QUICK_SIZE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
              "intermediate_size": 128, "max_position_embeddings": 256}  # fmt: skip
QUICK = {"warmup": 1, "steps": 2, "repeats": 1, "profile_steps": 1, "records": 24, "micro_batch": 2, "seq_len": 256}
METHOD = (
    "tokens/s: the chats' tokens trained in the timed steps (a chat of L tokens counts L, padding never) / seconds "
    "from the end of the last warm-up step to the end of the last timed step, everything either loop does "
    "between optimizer steps included; process start, imports, loading, data preparation (tokenizing, packing) "
    "and warm-up steps excluded. Median over --repeats processes per side, alternating order (F T, T F, ...). "
    "Ratio: Frontier's median / TRL's. Beside it, tokens per CPU second (the same tokens over the process's CPU "
    "time in the same window, every thread's user + system time): less moved by other processes sharing the "
    "CPUs, which stretch the wall clock; each run's 1-minute load average at its end says how busy the machine was.",
    "packing: Frontier packs first-fit decreasing into micro-batch rows of seq_len positions (the tail of a row "
    "padded; attention kept to each chat by a block-causal mask); TRL packs best-fit decreasing into bins of "
    "seq_len tokens and, padding-free, concatenates a step's bins into one row (position_ids restart per chat). "
    "Both train on the same chats, tokenized by the same chat template.",
    f"threads: OMP_NUM_THREADS={THREADS} and MKL_NUM_THREADS={THREADS} in each side's process, pinned to "
    f"{THREADS} CPUs (sched_setaffinity); each run reports torch.get_num_threads() as its process saw it.",
)


# -- the checkpoint and its data ---------------------------------------------------------------------


def build_llama(out: Path, size: Mapping[str, int], *, seed: int = 0) -> Path:
    """A random Llama 3 shape checkpoint with its tokenizer and chat template (tests/model/families.py)."""
    from tests.model.families import build_checkpoint

    return build_checkpoint("llama3", out, seed=seed, size=dict(size))


SYSTEMS = ("You are a concise Python tutor.", "Answer as a senior engineer would, briefly.",
           "You help people debug their code. Be precise.")  # fmt: skip
SUBJECTS = ("a list", "a dict", "a tuple", "a set", "a generator", "a dataclass", "a context manager",
            "a decorator", "a closure", "an iterator", "a string", "a bytes object", "a frozenset", "a deque",
            "a named tuple", "a coroutine", "a property", "a module", "a package", "an exception")  # fmt: skip
VERBS = ("copy", "sort", "reverse", "filter", "serialize", "iterate over", "compare", "merge", "freeze",
         "subclass", "test", "profile", "document", "type-annotate", "pickle", "hash", "slice", "flatten")  # fmt: skip
ASKS = ("How do I {verb} {subject} in Python?", "What is the cleanest way to {verb} {subject}?",
        "Why does my code fail when I {verb} {subject}?", "Can you show me how to {verb} {subject} safely?",
        "Is it expensive to {verb} {subject}?", "And what if I need to {verb} {subject} instead?")  # fmt: skip
SENTENCES = (
    "The standard library already covers this case, so reach for it before writing your own helper.",
    "Start from a small example and check the result in the interpreter before you generalise it.",
    "Remember that the operation returns a new object; the original stays unchanged.",
    "If the data is large, prefer a generator so that nothing is materialised until it is needed.",
    "Type hints do not change what happens at run time, but they make the intent clear to readers.",
    "A common mistake is to mutate the object while iterating over it, which skips elements silently.",
    "Measure with timeit before optimising: the obvious version is usually fast enough.",
    "Use functools.total_ordering when you need every comparison and only want to write two.",
    "The copy module distinguishes a shallow copy from a deep one; nested objects are shared by the first.",
    "Exceptions should be specific: catching Exception hides the bugs you want to see.",
    "For reproducible output, sort the keys before you serialise them.",
    "A dataclass with frozen=True is hashable, which lets you use it as a dictionary key.",
    "Context managers release their resources even when the body raises.",
    "itertools.chain.from_iterable flattens one level of nesting without building intermediate lists.",
    "Keep the function pure where you can; it is easier to test and to reason about.",
)


def synthetic_chats(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` chats ({"messages": [...]}): a system message on some, 1-3 user/assistant turns, answers of
    1-3 sentences, all from a seeded generator."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.5 else []
        for _turn in range(rng.randint(1, 3)):
            ask = rng.choice(ASKS).format(verb=rng.choice(VERBS), subject=rng.choice(SUBJECTS))
            answer = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
            messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
        chats.append({"messages": messages})
    return chats


def chat_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    out = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(out["input_ids"] if hasattr(out, "keys") else out)


def fit(tokenizer: Any, chats: list[dict[str, Any]], seq_len: int) -> list[dict[str, Any]]:
    """Each chat cut to whole turns that fit in `seq_len` tokens (a chat of one turn too long is left out)."""
    out = []
    for chat in chats:
        messages = list(chat["messages"])
        while messages and chat_length(tokenizer, messages) > seq_len:
            messages = messages[:-2]
        if any(m["role"] == "assistant" for m in messages):
            out.append({"messages": messages})
    return out


def write_data(work: Path, checkpoint: Path, records: int, seq_len: int) -> dict[str, Any]:
    """train.jsonl and heldout.jsonl of synthetic chats in work/data: their counts and token lengths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    chats = fit(tokenizer, synthetic_chats(records + HELDOUT, seed=0), seq_len)
    train, heldout = chats[:-HELDOUT], chats[-HELDOUT:]
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("heldout", heldout)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [chat_length(tokenizer, c["messages"]) for c in train]
    return {"dir": str(data), "train_chats": len(train), "heldout_chats": len(heldout), "train_tokens": sum(lengths),
            "chat_tokens_min": min(lengths), "chat_tokens_median": statistics.median(lengths),
            "chat_tokens_max": max(lengths),
            "turns": statistics.mean(sum(m["role"] == "user" for m in c["messages"]) for c in train)}  # fmt: skip


def parameter_count(checkpoint: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint, local_files_only=True))
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# -- one side, in its own process ------------------------------------------------------------------


def total_steps(plan: Mapping[str, Any]) -> int:
    """Warm-up, timed and profiled steps, and one more so neither side's end-of-run work lands in them."""
    return plan["warmup"] + plan["steps"] + plan["profile_steps"] + 1


def stamp() -> tuple[float, float]:
    """(wall clock, this process's CPU time: every thread's user + system seconds)."""
    return time.perf_counter(), time.process_time()


def timed_figures(
    stamps: Sequence[tuple[float, float]], tokens: Sequence[int], plan: Mapping[str, Any]
) -> dict[str, Any]:
    """stamps[i]: stamp() at the end of step i + 1; tokens[i]: the chats' tokens of step i + 1."""
    warmup, steps = plan["warmup"], plan["steps"]
    if len(stamps) < warmup + steps or len(tokens) < warmup + steps:
        raise RuntimeError(f"need {warmup + steps} steps, got {len(stamps)} stamps, {len(tokens)} token counts")
    (wall_0, cpu_0), (wall_1, cpu_1) = stamps[warmup - 1], stamps[warmup + steps - 1]
    timed_tokens = sum(tokens[warmup : warmup + steps])
    return {"tokens_per_s": timed_tokens / (wall_1 - wall_0), "timed_seconds": wall_1 - wall_0,
            "tokens_per_cpu_s": timed_tokens / (cpu_1 - cpu_0), "timed_cpu_seconds": cpu_1 - cpu_0,
            "timed_tokens": timed_tokens, "tokens_per_step": list(tokens[: warmup + steps]), "warmup_steps": warmup,
            "timed_steps": steps, "total_steps": len(stamps), "load_average_end": list(os.getloadavg())}  # fmt: skip


def _shared(plan: Mapping[str, Any]) -> Any:
    from frontier.config import load_params

    return load_params(PARAMS, list(plan["frontier_overrides"]))


def frontier_side(plan: Mapping[str, Any], work: Path) -> dict[str, Any]:
    """Frontier's finetune stage; each step's end time and the chats' tokens of each step recorded."""
    import torch
    from peers_llama import StepProfile

    from frontier.finetune.packing import PackedSampler
    from frontier.finetune.run import finetune
    from frontier.train import loop
    from frontier.train.batches.data import TrainBatches

    params = _shared(plan)
    stamps: list[tuple[float, float]] = []
    tokens: dict[int, int] = {}
    per_epoch: list[int] = []
    profile = StepProfile(plan["warmup"] + plan["steps"] + 1, plan["profile_steps"])
    original_step, original_batches = loop.Trainer.train_one_step, TrainBatches.step

    def observed(self: Any) -> bool:  # the real step; only the time it returns is noted
        profile.begin(len(stamps) + 1)
        stop = original_step(self)
        stamps.append(stamp())
        profile.end(len(stamps))
        return stop

    def counted(self: Any, step: int) -> list[Any]:  # the real batches; their chats' tokens noted by step
        sampler, lay = self.sampler, self.layout
        if isinstance(sampler, PackedSampler):
            if not per_epoch:
                per_epoch.append(int(sampler.lengths.sum()) + len(sampler.lengths))
            first = step * lay.global_batch
            total = 0
            for g in range(first, first + lay.global_batch):  # one rank: every window of the step
                epoch, i = divmod(g, sampler.num_windows)
                members = sampler.windows(epoch)[i]
                total += int(sampler.lengths[members].sum()) + len(members)  # L - 1 positions each: L tokens
            tokens[step] = total
        return original_batches(self, step)

    loop.Trainer.train_one_step = observed  # type: ignore[method-assign]
    TrainBatches.step = counted  # type: ignore[method-assign]
    try:
        metrics = finetune(params, Path(plan["checkpoint"]), Path(plan["data"]), work / "out", work / "checkpoints")
    finally:
        loop.Trainer.train_one_step = original_step  # type: ignore[method-assign]
        TrainBatches.step = original_batches  # type: ignore[method-assign]
    by_step = [tokens[s] for s in range(len(stamps)) if s in tokens]
    row = {"side": "frontier", **timed_figures(stamps, by_step, plan)}
    row.update({"epoch_tokens": per_epoch[0] if per_epoch else None, "params": metrics["total_params"],
                "final_loss": metrics["train_loss"], "padding_fraction_packed": metrics["padding_fraction_packed"],
                "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "profile": profile.summary()})  # fmt: skip
    return row


def trl_side(plan: Mapping[str, Any], work: Path) -> dict[str, Any]:
    """TRL's SFTTrainer with packing=True; each step's end time and the tokens of each step's batch recorded."""
    import torch
    import trl
    from datasets import Dataset
    from peers_llama import StepProfile
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from frontier.train.wiring import seed_all

    params = _shared(plan)
    ft, opt = params.finetune, params.optimizer
    seed_all(params.seed)
    checkpoint = Path(plan["checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="sdpa")
    records = [json.loads(line) for line in (Path(plan["data"]) / "train.jsonl").read_text().splitlines()]
    stamps: list[tuple[float, float]] = []
    tokens: list[int] = []
    profile = StepProfile(plan["warmup"] + plan["steps"] + 1, plan["profile_steps"])

    class Stamps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            profile.begin(state.global_step + 1)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(stamp())
            profile.end(state.global_step)

    class Counting(SFTTrainer):
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            mask = inputs.get("attention_mask")  # padding-free batches have none: every position is a token
            tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, num_items_in_batch)

    args = SFTConfig(
        output_dir=str(work / "trl"), max_steps=total_steps(plan), per_device_train_batch_size=plan["micro_batch"],
        gradient_accumulation_steps=1, learning_rate=ft.lr, adam_beta1=opt.beta1, adam_beta2=opt.beta2,
        adam_epsilon=opt.eps, weight_decay=ft.weight_decay, max_grad_norm=params.engine.grad_clip,
        lr_scheduler_type="constant", warmup_steps=0, packing=True, max_length=plan["seq_len"],
        activation_checkpointing=False, bf16=False, fp16=False, use_cpu=True, seed=params.seed, save_strategy="no",
        eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                       callbacks=[Stamps()])  # fmt: skip
    packed = trainer.train_dataset
    epoch_tokens = sum(sum(x) for x in packed["seq_lengths"]) if "seq_lengths" in packed.column_names else None
    result = trainer.train()
    row = {"side": "trl", **timed_figures(stamps, tokens, plan)}
    params_count = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    row.update({"epoch_tokens": epoch_tokens, "params": params_count,
                "final_loss": result.training_loss, "padding_free": bool(trainer.padding_free),
                "packing_strategy": args.packing_strategy, "optim": str(args.optim),
                "attn_implementation": model.config._attn_implementation, "trl": trl.__version__,
                "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "profile": profile.summary()})  # fmt: skip
    return row


# -- the measurement ---------------------------------------------------------------------------------


def frontier_overrides(plan: Mapping[str, Any]) -> list[str]:
    """Frontier's finetune as this bench runs it (params.yaml otherwise): full, packed, the plan's batch."""
    return ["finetune.method=full", "finetune.packing=true", f"finetune.max_seq_len={plan['seq_len']}",
            f"finetune.micro_batch_size={plan['micro_batch']}", "finetune.grad_accum_steps=1",
            f"finetune.max_steps={total_steps(plan)}", "finetune.warmup_steps=0", "finetune.train_on=all",
            "finetune.eval_every=0", "finetune.checkpoint_every=0", "finetune.resume=none",
            "schedule.kind=constant", "engine.precision=fp32", "engine.activation_checkpointing=false",
            "engine.monitor.progress_bar=false", "engine.monitor.tensorboard=false",
            "launch.nproc_per_node=1"]  # fmt: skip


def side_run(side: str, plan: Mapping[str, Any], work: Path) -> dict[str, Any]:
    """One side in a fresh process, OMP_NUM_THREADS=2, pinned to 2 CPUs: its row."""
    from peers_proc import child_env, cpu_set, timed

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps(plan, indent=2))
    out = work / "row.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--plan", str(work / "plan.json"),
           "--json", str(out)]  # fmt: skip
    cpus = cpu_set(THREADS)
    wall = timed(cmd, child_env(THREADS), work.parent / f"{work.name}.log", cpus=cpus)
    return {**json.loads(out.read_text()), "process_wall_s": wall, "cpus": cpus}


def pair(plan: Mapping[str, Any], work: Path) -> dict[str, Any]:
    """Both sides, --repeats times in alternating order; the median tokens/s of each."""
    sides = ("frontier", "trl")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(plan["repeats"]):
        for side in sides if r % 2 == 0 else sides[::-1]:
            one = {**plan, "profile_steps": plan["profile_steps"] if r == 0 else 0}
            runs[side].append(side_run(side, one, work / f"{side}_{r}"))
            last = runs[side][-1]
            print(f"{side} run {r}: {last['tokens_per_s']:,.1f} tokens/s, {last['tokens_per_cpu_s']:,.1f} tokens per "
                  f"CPU second, load average {last['load_average_end'][0]:.2f}", flush=True)  # fmt: skip
    return {side: {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
                   "tokens_per_cpu_s": statistics.median(x["tokens_per_cpu_s"] for x in rs), "runs": rs}
            for side, rs in runs.items()}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    import peers

    plan = {k: QUICK[k] if args.quick else getattr(args, k) for k in QUICK}
    size = QUICK_SIZE if args.quick else FULL_SIZE
    meta = {**peers.machine_facts(), "trl": peers._version("trl"), "datasets": peers._version("datasets"),
            "threads": METHOD[2].removeprefix("threads: ")}  # fmt: skip
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    checkpoint = build_llama(work / "checkpoint", size)
    data = write_data(work, checkpoint, plan["records"], plan["seq_len"])
    side_plan = {**plan, "checkpoint": str(checkpoint), "data": data["dir"]}
    side_plan["frontier_overrides"] = frontier_overrides(side_plan)
    result, error = peers._attempt("sft packing", lambda: pair(side_plan, work / "sides"))
    meta["load_average_end"] = list(os.getloadavg())
    f_tps = result["frontier"]["tokens_per_s"] if result else None
    t_tps = result["trl"]["tokens_per_s"] if result else None
    ratio = peers._ratio(f_tps, t_tps)
    cpu_ratio = peers._ratio(*(result[side]["tokens_per_cpu_s"] for side in ("frontier", "trl"))) if result else None
    return {
        "meta": meta,
        "settings": {"quick": args.quick, **plan, "model": {"family": "llama3", **size},
                     "parameters": parameter_count(checkpoint), "data": data,
                     "frontier_overrides": side_plan["frontier_overrides"], "method": list(METHOD)},  # fmt: skip
        "results": {ROW: result if result is not None else {"error": error}},
        "summary": {"frontier_tokens_per_s": f_tps, "trl_tokens_per_s": t_tps, "ratio": ratio,
                    "target": f"ratio >= {TARGET_RATIO}", "met": None if ratio is None else ratio >= TARGET_RATIO,
                    "cpu_time_ratio": cpu_ratio},
    }  # fmt: skip


# -- the report --------------------------------------------------------------------------------------


def side_lines(result: Mapping[str, Any]) -> list[str]:
    lines = ["| side | tokens/s (median) | runs (tokens/s) | tokens per CPU second (median) | runs' load average | "
             "tokens a timed step (mean) | chat tokens an epoch | parameters | last train loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    names = (("frontier", "Frontier (finetune stage, packing)"), ("trl", "TRL SFTTrainer (packing=True)"))
    for side, name in names:
        if side not in result:
            continue
        runs = result[side]["runs"]
        each = ", ".join(f"{r['tokens_per_s']:,.1f}" for r in runs)
        first = runs[0]
        per_step = first["timed_tokens"] / first["timed_steps"]
        loads = ", ".join(f"{r['load_average_end'][0]:.2f}" for r in runs)
        cpu = result[side]["tokens_per_cpu_s"]
        lines.append(f"| {name} | {result[side]['tokens_per_s']:,.1f} | {each} | {cpu:,.1f} | {loads} |"
                     f" {per_step:,.0f} | {first['epoch_tokens']} | {first['params']:,} | "
                     f"{runs[-1]['final_loss']:.4f} |")  # fmt: skip
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    import peers

    settings, summary = report["settings"], report["summary"]
    title = (
        f"Chat SFT with packing, Llama-shape {settings['parameters']:,} parameters, CPU {THREADS} threads: "
        "Frontier vs TRL SFTTrainer"
    )
    ratio = (
        f"Frontier / TRL tokens/s: **{peers._fmt(summary['ratio'])}** (target {summary['target']}: "
        f"{peers._fmt(summary['met'])}); tokens per CPU second: {peers._fmt(summary['cpu_time_ratio'])}"
    )
    return peers.pair_markdown(report, title, ratio, side_lines, METHOD, ROW)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "sft_trl_speed")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--quick", action="store_true", help="rehearsal: a toy model, a few steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--repeats", type=int, default=3, help="processes per side, alternating order (median)")
    parser.add_argument("--profile-steps", type=int, default=1, help="steps profiled after the timed ones (0: none)")
    parser.add_argument("--records", type=int, default=300, help="synthetic training chats")
    parser.add_argument("--micro-batch", type=int, default=4, help="packed windows (TRL: packed bins) a step")
    parser.add_argument("--seq-len", type=int, default=512, help="the packing window (TRL: max_length)")
    parser.add_argument("--side", choices=["frontier", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:  # one side, in the process the orchestrating call started
        plan = json.loads(args.plan.read_text())
        row = (frontier_side if args.side == "frontier" else trl_side)(plan, args.plan.parent)
        args.json.write_text(json.dumps(row, indent=2, default=str) + "\n")
        return 0
    import peers

    counts = {"--warmup": args.warmup, "--steps": args.steps, "--repeats": args.repeats, "--records": args.records,
              "--micro-batch": args.micro_batch, "--seq-len": args.seq_len}  # fmt: skip
    peers.check_counts(parser, counts, args.profile_steps)
    if not args.quick and args.seq_len > FULL_SIZE["max_position_embeddings"]:
        parser.error(f"--seq-len {args.seq_len}: the checkpoint's context is {FULL_SIZE['max_position_embeddings']}")
    report = run(args)
    stem = f"sft-trl-speed-{'quick-' if args.quick else ''}{report['meta']['date_utc'][:10]}"
    peers.write_report(args.out, stem, report, markdown(report))
    summary = report["summary"]
    print("\n".join(side_lines(report["results"][ROW])) if "error" not in report["results"][ROW] else "failed")
    print(f"frontier {peers._fmt(summary['frontier_tokens_per_s'])} tokens/s, "
          f"trl {peers._fmt(summary['trl_tokens_per_s'])} tokens/s, ratio {peers._fmt(summary['ratio'])}")  # fmt: skip
    print(f"wrote {args.out / stem}.json and .md")
    return 1 if "error" in report["results"][ROW] else 0


if __name__ == "__main__":
    sys.exit(main())
