"""Frontier's chat SFT side by side with TRL's SFTTrainer (assistant-only loss, multi-turn): the same tokens and
loss masks, and per-step training losses equal within 1e-5 for 10 steps.

Same tiny Qwen2 (ChatML) model, fp32, no dropout; the same conversations; AdamW with the same lr, betas, eps,
no weight decay, a constant lr without warmup, no gradient clipping. Every step is one micro-batch holding the
whole set, so both sides see the same examples whatever order their samplers pick, and both normalise the loss
over the batch's learned tokens.

Frontier reads the masks off the real Qwen2.5 template by rendering difference; TRL needs {% generation %}
markers, so it gets a ChatML template that marks content + <|im_end|> and renders the same text (asserted). TRL's
own Qwen2.5 training template (what it swaps in by itself) also learns the newline before the content and the
one after <|im_end|>, which the model never generates; hence the marked template here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frontier.finetune.dataset import read_records
from frontier.finetune.run import finetune
from tests.finetune.test_sft_formats import CHATML_GENERATION
from tests.finetune.trl_peer import (
    STEPS,
    frontier_params,
    trainer_args,
    trl_leaves_no_trace,  # noqa: F401  (autouse fixture)
)
from tests.model.families import build_checkpoint
from tests.train.helpers import losses

trl = pytest.importorskip("trl", reason="trl (the dev extra of the lock) is not installed")

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
QA = [
    ("What does len() return?", "The number of items."),
    ("And for a string?", "Its number of characters."),
    ("Name a mutable type.", "list"),
    ("An immutable one?", "tuple, or str."),
    ("How do I copy a list?", "Use list.copy() or a slice: a[:]."),
    ("What is None?", "The null object."),
    ("Is it a singleton?", "Yes: test it with `is`."),
    ("What does zip do?", "Pairs items of iterables."),
]


def conversations() -> list[dict]:
    """Eight conversations of one to three turns, each with the system message."""
    out = []
    for i in range(8):
        turns = [QA[(i + k) % len(QA)] for k in range(1 + i % 3)]
        msgs = [SYSTEM]
        for q, a in turns:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append({"messages": msgs})
    return out


def test_sft_losses_equal_trl_sft_trainer_step_by_step(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    base = build_checkpoint("qwen2", tmp_path / "base")
    records = conversations()
    sft = tmp_path / "sft"
    sft.mkdir()
    for split in ("train", "heldout"):
        (sft / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    # -- Frontier: the finetune stage, every weight trained -----------------------------------------------------
    params = frontier_params("finetune", len(records), "finetune.train_on=assistant")
    finetune(params, base, sft, tmp_path / "out", tmp_path / "ckpt")
    ours = losses(tmp_path / "out")

    # -- TRL: SFTTrainer, assistant_only_loss ---------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(base)
    plain_template = tokenizer.chat_template
    tokenizer.chat_template = CHATML_GENERATION
    for r in records:
        assert tokenizer.apply_chat_template(r["messages"], tokenize=False) == tokenizer.apply_chat_template(
            r["messages"], tokenize=False, chat_template=plain_template
        )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = SFTConfig(**trainer_args(len(records), tmp_path / "trl"), assistant_only_loss=True, packing=False)

    theirs_losses: list[float] = []

    class Recording(SFTTrainer):
        """SFTTrainer, keeping each step's training loss at full precision (the logged one is rounded)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                theirs_losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    trainer = Recording(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)

    # the same tokens and the same learned positions on both sides, record by record
    tokenizer.chat_template = plain_template
    frontier_records = read_records(sft / "train.jsonl", tokenizer, "assistant")
    tokenizer.chat_template = CHATML_GENERATION
    for ours_rec, theirs in zip(frontier_records, trainer.train_dataset, strict=True):
        assert ours_rec.ids.tolist() == theirs["input_ids"]
        assert ours_rec.learned.tolist() == [label != -100 for label in theirs["labels"]]

    trainer.train()
    assert len(ours) == len(theirs_losses) == STEPS
    assert ours[-1] < ours[0] - 0.1  # it learns
    np.testing.assert_allclose(ours, theirs_losses, rtol=0, atol=1e-5)
