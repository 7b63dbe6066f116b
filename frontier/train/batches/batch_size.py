"""micro_batch_size: auto — the largest micro-batch that fits, at a fixed global batch.

The same rule for the train and finetune stages (their sections share the batch keys,
frontier.config.train.BatchConfig; frontier.train.wiring resolves the batch for both through
`resolve_split`). The user states the global batch (``global_batch_size``, samples per optimizer step over all
ranks); `auto` picks the micro-batch and derives ``grad_accum_steps = global / (micro x ranks)``, so
the samples of every step (frontier.train.batches.data) and the run's identity (frontier.train.run.run_params,
keyed by the global batch) are those of any other split. Candidates are the divisors of
``global / ranks``, largest first.

How "fits" is decided:

- CUDA: by probing. Each candidate runs one real forward + backward of the module on random tokens
  of the run's shape, while a reservation for the optimizer state (and fp32 master weights) the
  engine will add is held; ``torch.cuda.OutOfMemoryError`` backs off to the next smaller candidate.
  The probe runs in the module's fp32 weights, so under bf16/fp16 it errs on the small side.
- CPU: by a memory budget: BUDGET_FRACTION of the available RAM, shared by the ranks of this node,
  against static bytes (weights, gradients, optimizer state, per precision and ZeRO partitioning)
  plus micro x the activation bytes of one sample, *measured*: the tensors autograd saves for
  backward during one forward of one sample (eager; activation checkpointing lowers it). The rest
  of the budget covers what that leaves out (backward's transient buffers, allocator slack).

Every rank takes the largest candidate that fits on all ranks. The choice is recorded in the run's
logs (``<checkpoints>/logs/batch_size.json``, keyed by the run's params and rank count) and reused
when the run resumes, even on a machine that would choose differently; a new run (other params,
another rank count, resume: none) chooses again. It is also in the run's run.json (``batch``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch

from frontier.errors import ConfigError
from frontier.train.launch.distributed import DistInfo, all_reduce_sum
from frontier.train.launch.environment import ranks_on_this_node
from frontier.utils.atomic import write_json

if TYPE_CHECKING:
    from frontier.config.train import BatchConfig

log = logging.getLogger("frontier.train")

BUDGET_FRACTION = 0.7  # of the RAM available when the run starts (the OS, data and DeepSpeed need the rest)
RECORD = "batch_size.json"
_MIB = 2**20


@dataclass(frozen=True)
class Split:
    """How a global batch is cut: micro-batch per rank and accumulation steps (x ranks = the global batch)."""

    micro_batch_size: int
    grad_accum_steps: int
    chosen_by: str  # "params", "cpu budget", "cuda probe" or "recorded"


def global_batch(cfg: BatchConfig, world_size: int) -> int:
    """The run's global batch: global_batch_size under auto, else micro x accumulation x ranks."""
    if cfg.micro_batch_size == "auto":
        return int(cfg.global_batch_size)
    return int(cfg.micro_batch_size) * int(cfg.grad_accum_steps) * world_size


def candidates(global_size: int, world_size: int, section: str = "train") -> list[int]:
    """Micro-batch sizes that split `global_size` evenly over the ranks, largest first (`section`: the stage's
    section, for the message)."""
    if global_size % world_size:
        raise ConfigError(
            f"{section}.global_batch_size: {global_size} does not split over {world_size} ranks; use a multiple of "
            f"{world_size}"
        )
    per_rank = global_size // world_size
    return [m for m in range(per_rank, 0, -1) if per_rank % m == 0]


def split_of(micro: int, global_size: int, world_size: int, chosen_by: str) -> Split:
    return Split(micro, global_size // (micro * world_size), chosen_by)


# -- the CPU budget ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank needs: `static` whatever the batch, plus `per_sample` for each sample of a micro-batch."""

    static: int
    per_sample: int

    def at(self, micro: int) -> int:
        return self.static + micro * self.per_sample


def static_bytes(module: torch.nn.Module, precision: str, zero_stage: int, world_size: int, state_bytes: int) -> int:
    """Weights, gradients and AdamW state (two moments of `state_bytes` each) of one rank.

    Half precision keeps fp32 master weights beside the 2-byte ones. ZeRO-1 partitions the optimizer
    state and master weights over the ranks, ZeRO-2 the gradients too, ZeRO-3 the weights too.
    """
    params = {id(p): p for p in module.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    half = precision in ("bf16", "fp16")
    weight, grad = (2, 2) if half else (4, 4)
    optim = 2 * state_bytes + (4 if half else 0)  # moments (+ fp32 master)
    share = lambda stage: world_size if zero_stage >= stage else 1  # noqa: E731
    return int(total * weight / share(3) + trainable * grad / share(2) + trainable * optim / share(1))


def activation_bytes_per_sample(module: torch.nn.Module, seq_len: int, vocab_size: int) -> int:
    """Bytes of the tensors autograd keeps for backward during a forward of one sample (seq_len tokens).

    Parameters (which autograd also saves) are not counted: static_bytes has them. Storages are
    counted once however many views of them are saved. The RNG is left as it was (dropout draws).
    """
    param_storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    device = next(module.parameters()).device
    ids = torch.randint(0, vocab_size, (1, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = module(ids[:, :-1], ids[:, 1:])  # (1, seq_len) inputs and next-token targets
        del loss  # frees the graph without a backward
    return sum(seen.values())


def cpu_budget(ranks_here: int) -> int:
    """BUDGET_FRACTION of the available RAM, per rank of this node."""
    return int(psutil.virtual_memory().available * BUDGET_FRACTION / max(ranks_here, 1))


def largest_within(estimate: MemoryEstimate, budget: int, options: list[int]) -> int:
    """The largest option whose estimate fits `budget`; 0 when not even the smallest does."""
    return next((micro for micro in options if estimate.at(micro) <= budget), 0)


def _over_budget(estimate: MemoryEstimate, budget: int, smallest: int, section: str) -> ConfigError:
    return ConfigError(
        f"{section}.micro_batch_size: auto: a micro-batch of {smallest} needs about "
        f"{estimate.at(smallest) / _MIB:.0f} MiB ({estimate.static / _MIB:.0f} MiB weights, gradients and optimizer "
        f"state + {estimate.per_sample / _MIB:.0f} MiB activations per sample) but this rank's budget is "
        f"{budget / _MIB:.0f} MiB ({BUDGET_FRACTION:.0%} of the available RAM, shared by the ranks here); free "
        "memory, use a smaller model or shorter sequences, or set engine.activation_checkpointing: true"
    )


# -- the CUDA probe ---------------------------------------------------------------------------------


def probe(step: Callable[[int], None], options: list[int], oom: tuple[type[BaseException], ...]) -> int:
    """The first option (largest first) for which `step(micro)` completes; an `oom` error backs off to the
    next. 0 when even the smallest option runs out of memory."""
    for micro in options:
        try:
            step(micro)
            return micro
        except oom:
            log.info("micro-batch %d: out of memory, trying a smaller one", micro)
        # after the except block: the failed step's tensors, held by its traceback until then, are free now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


_OUT_OF_DEVICE_MEMORY = (  # .format(section=): the stage's section
    "{section}.micro_batch_size: auto: even a micro-batch of 1 runs out of device memory in a forward and "
    "backward on at least one rank; use a smaller model or shorter sequences, set "
    "engine.activation_checkpointing: true, or a ZeRO stage / offload that keeps less on the device"
)


def cuda_step(module: torch.nn.Module, seq_len: int, vocab_size: int, reserve_bytes: int) -> Callable[[int], None]:
    """One forward + backward of `micro` random samples on the module's device, holding `reserve_bytes` as
    the engine's optimizer state would; gradients and the RNG are left as they were."""
    device = next(module.parameters()).device

    def step(micro: int) -> None:
        try:
            with torch.random.fork_rng(devices=[device]):
                held = torch.empty(reserve_bytes, dtype=torch.uint8, device=device)
                ids = torch.randint(0, vocab_size, (micro, seq_len + 1), device=device)
                module(ids[:, :-1], ids[:, 1:]).backward()  # (micro, seq_len) inputs and targets
                torch.cuda.synchronize(device)
                del held
        finally:
            module.zero_grad(set_to_none=True)

    return step


# -- choosing and recording -------------------------------------------------------------------------


def agree(micro: int, options: list[int], info: DistInfo) -> int:
    """The largest option every rank can take, given each rank's own largest fitting `micro` (0: none fits
    on some rank, and then 0 everywhere, so that every rank stops with the same message)."""
    fits = all_reduce_sum([1.0 if micro >= m else 0.0 for m in options], info)
    return next((m for m, n in zip(options, fits, strict=True) if n >= info.world_size), 0)


def record_key(run_params: dict[str, Any], world_size: int) -> str:
    """What a recorded choice is valid for: this run's identity and rank count."""
    text = json.dumps({"run_params": run_params, "world_size": world_size}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_record(logs_dir: Path, key: str, options: list[int]) -> int | None:
    """The micro-batch recorded for the run `key` names, if any (and still a valid split)."""
    try:
        data = json.loads((Path(logs_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    micro = data.get("micro_batch_size") if isinstance(data, dict) and data.get("key") == key else None
    return micro if isinstance(micro, int) and micro in options else None


def write_record(logs_dir: Path, key: str, split: Split) -> None:
    write_json(Path(logs_dir) / RECORD, {"key": key, **asdict(split)})


def choose(
    *,
    global_size: int,
    info: DistInfo,
    recorded: int | None,
    measure: Callable[[], MemoryEstimate],
    cuda_step_for: Callable[[], Callable[[int], None]],
    probe_device: bool,
    budget: int | None = None,
    section: str = "train",
) -> Split:
    """The split of `global_size` for micro_batch_size auto: the recorded micro-batch when there is one, else
    the largest that fits by a probe (`probe_device`: CUDA) or by the memory budget (CPU; `budget` bytes per
    rank, default cpu_budget). ConfigError, on every rank, when not even a micro-batch of 1 fits on one
    (naming `section`'s keys)."""
    options = candidates(global_size, info.world_size, section)
    if recorded is not None:
        return split_of(recorded, global_size, info.world_size, "recorded")
    if probe_device:
        micro = agree(probe(cuda_step_for(), options, (torch.cuda.OutOfMemoryError,)), options, info)
        if not micro:
            raise ConfigError(_OUT_OF_DEVICE_MEMORY.format(section=section))
        return split_of(micro, global_size, info.world_size, "cuda probe")
    budget = cpu_budget(ranks_on_this_node(info.world_size)) if budget is None else budget
    estimate = measure()
    micro = agree(largest_within(estimate, budget, options), options, info)
    if not micro:
        raise _over_budget(estimate, budget, options[-1], section)
    return split_of(micro, global_size, info.world_size, "cpu budget")


def resolve_split(
    batch: BatchConfig,
    module: torch.nn.Module,
    info: DistInfo,
    *,
    seq_len: int,
    precision: str,
    zero_stage: int,
    state_bytes: int,
    logs_dir: Path,
    identity: dict[str, Any],
    resume: str,
    section: str = "train",
) -> Split:
    """A run's micro-batch and accumulation: `batch`'s numbers, or chosen for micro_batch_size auto (the choice
    recorded in `logs_dir` for the run `identity` is reused unless `resume` is none). `module` is what the
    engine will train (a CausalLMWithLoss), `seq_len` its samples' length; `precision`, `zero_stage` and the
    optimizer's `state_bytes` per moment size what the engine adds to it. Called by frontier.train.wiring."""
    size = global_batch(batch, info.world_size)
    if batch.micro_batch_size != "auto":
        return Split(batch.micro_batch_size, batch.grad_accum_steps, "params")
    options = candidates(size, info.world_size, section)
    recorded = read_record(logs_dir, record_key(identity, info.world_size), options) if resume != "none" else None
    vocab = module.lm.config.vocab_size

    def measure() -> MemoryEstimate:
        static = static_bytes(module, precision, zero_stage, info.world_size, state_bytes)
        return MemoryEstimate(static, activation_bytes_per_sample(module, seq_len, vocab))

    def cuda_step_for() -> Callable[[int], None]:
        module.to(info.device)
        total = static_bytes(module, precision, zero_stage, info.world_size, state_bytes)
        weights_and_grads = static_bytes(module, "fp32", 0, 1, 0)  # what the probe itself holds
        return cuda_step(module, seq_len, vocab, max(total - weights_and_grads, 0))

    split = choose(global_size=size, info=info, recorded=recorded, measure=measure, cuda_step_for=cuda_step_for,
                   probe_device=info.device.type == "cuda", section=section)  # fmt: skip
    log.info("%s.micro_batch_size auto: micro-batch %d x %d accumulation steps x %d rank(s) = %d (%s)", section,
             split.micro_batch_size, split.grad_accum_steps, info.world_size, size, split.chosen_by)  # fmt: skip
    return split
