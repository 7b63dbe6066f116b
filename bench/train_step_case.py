"""The timed case of bench/train_step.py: a config's model and the batches every variant steps.

A ``Case`` is one params file (with its overrides) resolved to the shapes the train stage would step;
``make_batches`` draws its random token batches and ``_module`` / ``_torch_adamw`` build the model and the
bare loop's optimizer the way the train stage does, so every variant starts from the same weights.
Imported by bench/train_step.py, which sets DS_ACCELERATOR first: nothing here imports deepspeed at
import time (frontier is imported inside the functions that need it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

# name -> (params file, vocabulary size). The char tokenizer of shakespeare_char gives 65 characters
# plus its 4 specials (pad, bos, eos, unk); the default pipeline's BPE has tokenizer.vocab_size entries.
CONFIGS: dict[str, tuple[Path, int | None]] = {
    "llama_default": (REPO / "params.yaml", None),
    "shakespeare_char": (REPO / "configs" / "shakespeare_char.yaml", 65 + 4),
}
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
    from frontier.train.batches.data import Batch

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
    from frontier.model.kernels import apply_kernels
    from frontier.model.loss import CausalLMWithLoss
    from frontier.train.wiring import seed_all

    seed_all(case.params.seed)  # every variant starts from the same weights
    lm = build_model(case.params.model, case.vocab_size, bos_id=_BOS, eos_id=_EOS, pad_id=_PAD)
    lm = apply_kernels(lm, case.params.kernels)
    if case.params.engine.activation_checkpointing:  # as frontier.train.wiring.prepare_model does; off by default
        from frontier.model.checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(lm)
    module = CausalLMWithLoss(lm, case.params.kernels)
    module.train()
    return module


def _torch_adamw(module: torch.nn.Module, case: Case) -> torch.optim.Optimizer:
    """torch's AdamW over frontier's param groups (same decay split), fused where torch has it."""
    from frontier.train.engine.optimizer import param_groups

    o = case.params.optimizer
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(module, o)]
    kwargs = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a torch without the fused CPU kernel
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


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
