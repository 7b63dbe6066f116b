"""The settings both sides of a TRL comparison share: one full-data micro-batch per step, fp32, AdamW with the
same lr / betas / eps, no weight decay, a constant lr without warmup, no clipping (tests/finetune/test_*_trl.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frontier.config import Params, load_params
from tests.eval.tiny import TRAIN_OVERRIDES

STEPS, LR, BETAS, EPS = 10, 1e-3, (0.9, 0.999), 1e-8


def frontier_params(section: str, batch: int, *extra: str) -> Params:
    """Frontier's side: `section` (finetune or preference) trains every weight under the shared settings."""
    own = ["method=full", f"lr={LR}", "warmup_steps=0", "weight_decay=0", f"max_steps={STEPS}",
           f"micro_batch_size={batch}", "grad_accum_steps=1", "log_every=1", "eval_every=0"]  # fmt: skip
    shared = ["schedule.kind=constant", f"optimizer.beta1={BETAS[0]}", f"optimizer.beta2={BETAS[1]}",
              f"optimizer.eps={EPS}", "engine.grad_clip=0", "engine.precision=fp32"]  # fmt: skip
    return load_params(None, [*TRAIN_OVERRIDES, *(f"{section}.{o}" for o in own), *shared, *extra])


def trainer_args(batch: int, out_dir: Path) -> dict[str, Any]:
    """TRL's side: the TrainingArguments of the shared settings (its SFTConfig / DPOConfig add their own)."""
    return dict(
        output_dir=str(out_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=1, learning_rate=LR,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS, weight_decay=0.0, lr_scheduler_type="constant",
        warmup_steps=0, max_steps=STEPS, max_grad_norm=0.0, optim="adamw_torch", max_length=None,
        activation_checkpointing=False, bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, disable_tqdm=True,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def trl_leaves_no_trace() -> Iterator[None]:
    """The process environment and accelerate's singleton state as they were before TRL ran: accelerate writes
    RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_PORT into os.environ, which a later test's
    ranks (started from this process's environment) would otherwise inherit."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
