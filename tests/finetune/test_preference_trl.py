"""Frontier's DPO and ORPO side by side with TRL's DPOTrainer and (experimental) ORPOTrainer: per-step loss,
chosen/rejected rewards, margins and accuracy equal within 1e-5 for 10 steps.

Same tiny random Qwen2, fp32, no dropout, the same six pairs (plain prompt/chosen/rejected strings: both sides
append EOS to the completions and take the completion from where prompt and prompt + completion tokenize
apart); method full with the reference = the starting weights (TRL: a frozen copy of the model); AdamW with
the same lr, betas, eps, no weight decay, a constant lr without warmup, no gradient clipping. Every step is one
micro-batch holding every pair, so the sampler order does not matter, and both sides average over the pairs.

ORPO: TRL 1.16 ships it as trl.experimental.orpo.ORPOTrainer (ORPOConfig.beta is the paper's lambda, Frontier's
preference.orpo_lambda). Its odds-ratio term and rewards are the paper's (mean token log-probs of the completions);
its NLL term is not: nn.CrossEntropyLoss over the chosen rows' prompt + completion tokens, a mean over all of the
forward's tokens, where the paper (and Frontier's default, preference.orpo_nll: response) takes each pair's mean
NLL of its chosen completion. Frontier's preference.orpo_nll: sequence is TRL's choice, and is what this test sets;
tests/finetune/test_preference_loss.py checks both settings against their formulas computed by hand.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from frontier.finetune.preference import preference
from frontier.finetune.preference_data import collate_pairs, read_pairs
from frontier.finetune.preference_loss import PreferenceLoss
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
ORPO_LAMBDA = 0.25

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


def base_and_data(tmp_path):
    """The tiny random Qwen2 checkpoint and a data dir whose train and held-out splits are both PAIRS."""
    base = build_checkpoint("qwen2", tmp_path / "base")
    data = tmp_path / "pref"
    data.mkdir()
    for split in ("train", "heldout"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return base, data


STAT_KEYS = {"rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
             "margins": "rewards/margins", "accuracy": "rewards/accuracies"}  # fmt: skip


def run_ours(params, base, data, tmp_path):
    """Frontier's preference stage: (its metrics, the loss of each step, the rows of plots/preference.csv)."""
    metrics = preference(params, base, data, tmp_path / "out", tmp_path / "ckpt")
    ours_loss = losses(tmp_path / "out")
    ours = read_rows(tmp_path / "out" / "plots" / "preference.csv")
    assert [int(r["step"]) for r in ours] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([float(r["loss"]) for r in ours], ours_loss, rtol=0, atol=1e-6)
    return metrics, ours_loss, ours


def recording(trainer_cls, metrics_of, theirs: list[dict[str, float]]):
    """`trainer_cls`, keeping each training step's loss (full precision: the logged one is rounded) and the
    reward figures it stores for the step (`metrics_of(trainer)`: key -> the values stored so far)."""

    class Recording(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                m = metrics_of(self)
                row = {"loss": float((out[0] if return_outputs else out).detach())}
                theirs.append(row | {ours: m[key][-1] for ours, key in STAT_KEYS.items()})
            return out

    return Recording


def assert_steps_equal(ours: list[dict[str, str]], theirs: list[dict[str, float]], peer: str) -> None:
    assert len(theirs) == STEPS
    for key in ("loss", *STAT_KEYS):
        mine = [float(r[key]) for r in ours]
        np.testing.assert_allclose(mine, [t[key] for t in theirs], rtol=0, atol=1e-5, err_msg=key)
    diff = max(abs(float(r[k]) - t[k]) for r, t in zip(ours, theirs) for k in ("loss", "margins"))
    print(f"max |diff| vs TRL {peer} over {STEPS} steps: {diff:.3g}")


def test_dpo_equals_trl_dpo_trainer_step_by_step(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    base, data = base_and_data(tmp_path)

    # -- Frontier: the preference stage, every weight trained ------------------------------------------------------
    metrics, ours_loss, ours = run_ours(frontier_params(len(PAIRS)), base, data, tmp_path)

    # -- TRL: DPOTrainer, sigmoid loss, the reference a frozen copy of the starting model -----------------------------
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = DPOConfig(
        **trainer_args(len(PAIRS), tmp_path / "trl"), beta=BETA, loss_type=["sigmoid"], label_smoothing=0.0
    )
    theirs: list[dict[str, float]] = []
    trainer_cls = recording(DPOTrainer, lambda t: t._metrics["train"], theirs)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    trainer.train()

    assert ours_loss[-1] < ours_loss[0] - 0.05  # it learns a preference
    assert_steps_equal(ours, theirs, "DPOTrainer")
    assert metrics["steps"] == STEPS and metrics["loss_kind"] == "dpo"


def test_orpo_equals_trl_orpo_trainer_step_by_step(tmp_path):
    """preference.orpo_nll: sequence (TRL's NLL term) against trl.experimental.orpo.ORPOTrainer; the paper's
    (the default, response) differs from it by more than the tolerance on these pairs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    orpo = pytest.importorskip("trl.experimental.orpo", reason="this TRL ships no ORPOTrainer")
    base, data = base_and_data(tmp_path)

    # -- Frontier: the preference stage, ORPO with TRL's NLL term ------------------------------------------------------
    params = peer_params("preference", len(PAIRS), "preference.loss=orpo", f"preference.orpo_lambda={ORPO_LAMBDA}",
                         "preference.orpo_nll=sequence")  # fmt: skip
    metrics, ours_loss, ours = run_ours(params, base, data, tmp_path)

    # -- TRL: ORPOTrainer, beta = lambda -------------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = orpo.ORPOConfig(**(trainer_args(len(PAIRS), tmp_path / "trl") | {"max_length": 512}), beta=ORPO_LAMBDA)
    theirs: list[dict[str, float]] = []
    trainer_cls = recording(orpo.ORPOTrainer, lambda t: t._stored_metrics["train"], theirs)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)

    # the same tokens on both sides, and the same completion positions scored, pair by pair
    pairs = read_pairs(data / "train.jsonl", tokenizer, 512)
    for pair, row in zip(pairs, trainer.train_dataset, strict=True):
        for side in ("chosen", "rejected"):
            completion = getattr(pair, side).tolist()
            assert pair.prompt.tolist() + completion == row[f"{side}_input_ids"]
            assert row[f"{side}_labels"] == [-100] * pair.prompt.size + completion

    # the paper's NLL term (Frontier's default) is another loss: at the starting weights it already differs
    start = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    batch = collate_pairs(pairs, tokenizer.pad_token_id).model_inputs(torch.device("cpu"))
    with torch.no_grad():
        response = float(PreferenceLoss(start, "orpo", BETA, ORPO_LAMBDA)(**batch)) / len(pairs)

    trainer.train()
    assert ours_loss[-1] < ours_loss[0] - 0.05  # it learns
    assert_steps_equal(ours, theirs, "ORPOTrainer")
    assert abs(response - theirs[0]["loss"]) > 1e-3
    assert metrics["steps"] == STEPS and metrics["loss_kind"] == "orpo" and metrics["orpo_nll"] == "sequence"
