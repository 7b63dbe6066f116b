"""Frontier's DPO side by side with TRL's DPOTrainer: per-step loss, chosen/rejected rewards, margins and accuracy
equal within 1e-5 for 10 steps.

Same tiny random Qwen2, fp32, no dropout, the same six pairs (plain prompt/chosen/rejected strings: both sides
append EOS to the completions and take the completion from where prompt and prompt + completion tokenize
apart); method full with the reference = the starting weights (TRL: a frozen copy of the model); AdamW with
the same lr, betas, eps, no weight decay, a constant lr without warmup, no gradient clipping. Every step is one
micro-batch holding every pair, so the sampler order does not matter, and both sides average over the pairs.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from frontier.finetune.preference import preference
from tests.finetune.trl_peer import (
    STEPS,
    trainer_args,
    trl_leaves_no_trace,  # noqa: F401  (autouse fixture)
)
from tests.finetune.trl_peer import frontier_params as peer_params
from tests.model.families import build_checkpoint
from tests.train.helpers import losses

trl = pytest.importorskip("trl", reason="trl (the dev extra of the lock) is not installed")

BETA = 0.1

PAIRS = [
    {"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "    return a - b\n"},
    {"prompt": "def is_even(n):\n", "chosen": "    return n % 2 == 0\n", "rejected": "    return n % 2\n"},
    {"prompt": "def first(xs):\n", "chosen": "    return xs[0]\n", "rejected": "    return xs[-1]\n"},
    {"prompt": "def square(x):\n", "chosen": "    return x * x\n", "rejected": "    return x + x\n"},
    {"prompt": "def greet(name):\n", "chosen": "    return f'Hello, {name}!'\n", "rejected": "    print(name)\n"},
    {"prompt": "def length(s):\n", "chosen": "    return len(s)\n", "rejected": "    return s\n"},
]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def frontier_params(n_pairs: int, *extra: str):
    return peer_params("preference", n_pairs, "preference.loss=dpo", f"preference.beta={BETA}", *extra)


def test_dpo_equals_trl_dpo_trainer_step_by_step(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    base = build_checkpoint("qwen2", tmp_path / "base")
    data = tmp_path / "pref"
    data.mkdir()
    for split in ("train", "heldout"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))

    # -- Frontier: the preference stage, every weight trained ------------------------------------------------------
    metrics = preference(frontier_params(len(PAIRS)), base, data, tmp_path / "out", tmp_path / "ckpt")
    ours_loss = losses(tmp_path / "out")
    ours = read_rows(tmp_path / "out" / "plots" / "preference.csv")
    assert [int(r["step"]) for r in ours] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([float(r["loss"]) for r in ours], ours_loss, rtol=0, atol=1e-6)

    # -- TRL: DPOTrainer, sigmoid loss, the reference a frozen copy of the starting model -----------------------------
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = DPOConfig(
        **trainer_args(len(PAIRS), tmp_path / "trl"), beta=BETA, loss_type=["sigmoid"], label_smoothing=0.0
    )
    theirs: list[dict[str, float]] = []

    class Recording(DPOTrainer):
        """DPOTrainer, keeping each step's loss and reward figures at full precision."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                m = self._metrics["train"]
                theirs.append(
                    {
                        "loss": float((out[0] if return_outputs else out).detach()),
                        "rewards_chosen": m["rewards/chosen"][-1],
                        "rewards_rejected": m["rewards/rejected"][-1],
                        "margins": m["rewards/margins"][-1],
                        "accuracy": m["rewards/accuracies"][-1],
                    }
                )
            return out

    trainer = Recording(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    trainer.train()

    assert len(theirs) == STEPS
    assert ours_loss[-1] < ours_loss[0] - 0.05  # it learns a preference
    for key in ("loss", "rewards_chosen", "rewards_rejected", "margins", "accuracy"):
        mine = [float(r[key]) for r in ours]
        np.testing.assert_allclose(mine, [t[key] for t in theirs], rtol=0, atol=1e-5, err_msg=key)
    diff = max(abs(float(r[k]) - t[k]) for r, t in zip(ours, theirs) for k in ("loss", "margins"))
    print(f"max |diff| vs TRL DPOTrainer over {STEPS} steps: {diff:.3g}")
    assert metrics["steps"] == STEPS and metrics["loss_kind"] == "dpo"
