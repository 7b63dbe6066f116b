"""One throughput row of bench/peers.py: Frontier's train stage or the Hugging Face Trainer on the same model.

    python bench/peers_llama.py {frontier,hf} --tokens DIR --tokenizer DIR --work DIR --json OUT
        [--params params.yaml] [--set KEY=VALUE ...] [--warmup 20] [--steps 200] [--compile] [--profile-steps 0]

Both sides train the model that params.yaml's model section describes (built by frontier.model.build,
the same seed, fp32) on the same token windows in the same order: Frontier's own sampler
(frontier.train.batches.data.TrainBatches) over the tokens that Frontier's tokenize stage wrote is what both
consume, step by step. The figure is tokens/s over the `--steps` steps that follow `--warmup` steps,
timed from the end of step `warmup` to the end of step `warmup + steps` (whatever each loop does
between optimizer steps counts: fetching data, its logging, its bookkeeping). One more step follows
the timed ones so neither side's end-of-training save lands inside them.

Each side runs with its documented defaults except what would add work the other does not do:
* Frontier: train.eval_every 0 (no eval), no progress bar, no TensorBoard, resume none, one rank;
  log_every, the system monitor thread, the checkpoint at the end stay as params.yaml has them.
* Trainer: SDPA attention, optim adamw_torch_fused (its default), the same lr / betas / eps / weight
  decay / clip / cosine schedule with warmup, save_strategy no, eval_strategy no, report_to none,
  no tqdm; logging_steps stays at its default (500).

With --profile-steps N, N more steps after the timed ones run under torch.profiler (CPU self time per
op): the row's "profile" says where a step's time goes, matrix multiplications and attention apart.

The thread count is whatever OMP_NUM_THREADS says when torch is imported (bench/peers.py sets it per
row); the row reports torch.get_num_threads() as this process saw it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # this bench measures the CPU path, whatever the machine has
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: frontier is imported from this checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the environment switches above)


def compile_unavailable() -> str | None:
    """Why Frontier's compiled row cannot run (None when engine.compile exists in the schema)."""
    from frontier.config.engine import EngineConfig

    if "compile" in {f.name for f in dataclasses.fields(EngineConfig)}:
        return None
    return "frontier/config/engine.py has no engine.compile key in this checkout"


def tokens_per_s(stamps: Sequence[float], warmup: int, steps: int, step_tokens: int) -> float:
    """Tokens/s between the end of step `warmup` and the end of step `warmup + steps` (stamps[i]: end of step i+1)."""
    if warmup < 1 or len(stamps) < warmup + steps:
        raise ValueError(f"need {warmup + steps} step stamps after >= 1 warm-up step, got {len(stamps)}")
    seconds = stamps[warmup + steps - 1] - stamps[warmup - 1]
    return steps * step_tokens / seconds


def _load(params_path: Path, overrides: Sequence[str]) -> Any:
    from frontier.config import load_params

    return load_params(params_path, list(overrides))


def _row(side: str, params: Any, step_tokens: int, stamps: list[float], warmup: int, steps: int) -> dict[str, Any]:
    cfg = params.train
    return {
        "side": side,
        "tokens_per_s": tokens_per_s(stamps, warmup, steps, step_tokens),
        "timed_seconds": stamps[warmup + steps - 1] - stamps[warmup - 1],
        "warmup_steps": warmup,
        "timed_steps": steps,
        "total_steps": len(stamps),
        "step_tokens": step_tokens,
        "micro_batch_size": cfg.micro_batch_size,
        "grad_accum_steps": cfg.grad_accum_steps,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


# -- where the time goes -----------------------------------------------------------------------------

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


class StepProfile:
    """torch.profiler over steps first .. first + count - 1 (1-based, as the loops count them)."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self.prof: torch.profiler.profile | None = None

    def begin(self, step: int) -> None:
        if self.count and step == self.first and self.prof is None:  # once (a callback may repeat a step)
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.start()

    def end(self, step: int) -> None:
        if self.prof is not None and step == self.first + self.count - 1:
            self.prof.stop()

    def summary(self, top: int = 10) -> dict[str, Any] | None:
        """Self CPU ms per step in all, the shares of matmuls and attention, and the `top` ops."""
        if self.prof is None:
            return None
        ops = [(e.key, e.self_cpu_time_total / 1e3 / self.count) for e in self.prof.key_averages()]  # ms/step
        total = sum(ms for _, ms in ops)
        matmul = sum(ms for key, ms in ops if key in MATMUL_OPS)
        attention = sum(ms for key, ms in ops if "scaled_dot_product" in key or "flash_attention" in key)
        ranked = sorted(ops, key=lambda kv: -kv[1])[:top]
        # a check on the window: each loop's optimizer step is one profiler event per step
        optimizer_steps = sum(e.count for e in self.prof.key_averages() if e.key.startswith("Optimizer.step#"))
        return {
            "steps": self.count,
            "optimizer_steps_seen": optimizer_steps,
            "self_ms_per_step": total,
            "matmul_share": matmul / total,
            "attention_share": attention / total,
            "top": [{"op": key, "ms_per_step": ms, "share": ms / total} for key, ms in ranked],
        }


# -- Frontier ----------------------------------------------------------------------------------------


def frontier_row(
    params_path: Path, overrides: Sequence[str], tokens: Path, tokenizer: Path, work: Path,
    *, warmup: int, steps: int, compile: bool, profile_steps: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Frontier's train stage (frontier.train.run.train, as `frontier train` calls it), step ends recorded."""
    from frontier.train import loop
    from frontier.train.run import train

    sets = [
        *overrides,
        f"train.max_steps={warmup + steps + profile_steps + 1}",
        "train.eval_every=0",
        "train.resume=none",
        "engine.monitor.progress_bar=false",
        "engine.monitor.tensorboard=false",
        "launch.nproc_per_node=1",
    ]
    if compile:
        reason = compile_unavailable()
        if reason:
            raise SystemExit(f"--compile: {reason}")
        sets.append("engine.compile=true")
    params = _load(params_path, sets)
    stamps: list[float] = []
    profile = StepProfile(warmup + steps + 1, profile_steps)
    original = loop.Trainer.train_one_step

    def observed(self: Any) -> bool:  # the real step; only the time it returns is noted
        profile.begin(len(stamps) + 1)
        stop = original(self)
        stamps.append(time.perf_counter())
        profile.end(len(stamps))
        return stop

    loop.Trainer.train_one_step = observed  # type: ignore[method-assign]
    try:
        metrics = train(params, tokens, tokenizer, work / "run", work / "checkpoints")
    finally:
        loop.Trainer.train_one_step = original  # type: ignore[method-assign]
    row = _row("frontier", params, metrics["global_batch"] * metrics["seq_len"], stamps, warmup, steps)
    # Frontier's own figure: tokens over the summed step times, warm-up steps included, loop overhead excluded
    row["frontier_reported_tokens_per_s"] = metrics["tokens_per_s"]
    row["params"] = metrics["params"]
    row["final_loss"] = metrics["train_loss"]
    row["compile"] = compile
    row["profile"] = profile.summary()
    return row


# -- Hugging Face Trainer ----------------------------------------------------------------------------


class StepWindows(torch.utils.data.IterableDataset):
    """Frontier's training windows in step order, one example per row: what the Trainer's loader batches."""

    def __init__(self, batches: Any, num_steps: int) -> None:
        self.batches = batches
        self.num_steps = num_steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for step in range(self.num_steps):
            for micro in self.batches.step(step):
                for inputs, targets in zip(micro.input_ids, micro.targets, strict=True):
                    # shift_labels: the targets are already shifted (Frontier's windows), so the model's loss
                    # scores all seq_len positions as Frontier's does; labels only switches the loss on
                    yield {"input_ids": inputs, "labels": targets, "shift_labels": targets}


def hf_row(
    params_path: Path, overrides: Sequence[str], tokens: Path, work: Path, *, warmup: int, steps: int, compile: bool,
    profile_steps: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """transformers.Trainer training the same model (SDPA attention) on the same windows."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from frontier.data.tokens import TokenShards
    from frontier.model.build import build_model
    from frontier.model.presets import resolve
    from frontier.train.batches.data import Layout, TrainBatches, WindowSampler
    from frontier.train.wiring import seed_all

    params = _load(params_path, [*overrides, f"train.max_steps={warmup + steps + profile_steps + 1}"])
    cfg, opt = params.train, params.optimizer
    shards = TokenShards(tokens / "train")
    seq_len = cfg.seq_len or resolve(params.model).max_seq_len
    seed_all(params.seed)  # the weights Frontier's stage starts from
    lm = build_model(params.model, shards.vocab_size, bos_id=shards.bos_id, eos_id=shards.eos_id, pad_id=shards.pad_id)
    lm.set_attn_implementation("sdpa")
    lm.config.use_cache = False
    batches = TrainBatches(WindowSampler(shards, seq_len, params.seed, cfg.document_aware),
                           Layout(cfg.micro_batch_size, cfg.grad_accum_steps, 1, 0))  # fmt: skip
    stamps: list[float] = []
    profile = StepProfile(warmup + steps + 1, profile_steps)

    class Stamps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            profile.begin(state.global_step + 1)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())
            profile.end(state.global_step)

    args = TrainingArguments(
        output_dir=str(work / "hf"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        learning_rate=opt.lr,
        adam_beta1=opt.beta1,
        adam_beta2=opt.beta2,
        adam_epsilon=opt.eps,
        weight_decay=opt.weight_decay,
        max_grad_norm=params.engine.grad_clip,
        lr_scheduler_type="cosine",
        warmup_steps=params.schedule.warmup_steps,
        optim="adamw_torch_fused",
        use_cpu=True,
        seed=params.seed,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        torch_compile=compile,
    )
    trainer = Trainer(model=lm, args=args, train_dataset=StepWindows(batches, cfg.max_steps), callbacks=[Stamps()])
    result = trainer.train()
    row = _row("hf_trainer", params, cfg.micro_batch_size * cfg.grad_accum_steps * seq_len, stamps, warmup, steps)
    row["params"] = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    row["final_loss"] = result.training_loss
    row["compile"] = compile
    row["attn_implementation"] = lm.config._attn_implementation
    row["optim"] = str(args.optim)
    row["profile"] = profile.summary()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["frontier", "hf"])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=0, help="steps profiled after the timed ones")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.profile_steps < 0:
        parser.error("--warmup and --steps must be at least 1, --profile-steps at least 0")
    common = dict(warmup=args.warmup, steps=args.steps, compile=args.compile, profile_steps=args.profile_steps)
    if args.side == "frontier":
        row = frontier_row(args.params, args.overrides, args.tokens, args.tokenizer, args.work, **common)
    else:
        row = hf_row(args.params, args.overrides, args.tokens, args.work, **common)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
