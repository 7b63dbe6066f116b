"""What the fine-tune tests share: tiny-run overrides, the pairs and base they train on, their losses."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from frontier.config import Params, load_params
from tests.eval.tiny import TRAIN_OVERRIDES

FT_OVERRIDES = (
    *TRAIN_OVERRIDES,
    "finetune.r=4",
    "finetune.alpha=8",
    "finetune.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
    "finetune.lr=2e-2",
    "finetune.warmup_steps=2",
    "finetune.max_steps=40",
    "finetune.micro_batch_size=8",
    "finetune.eval_every=10",
    "finetune.log_every=5",
    "finetune.heldout_fraction=0.2",
    "finetune.max_prompt_chars=150",  # short pairs: most fit the tiny model's 64-token context
    "finetune.max_response_chars=300",
)

# A short run that logs every step: what per-step comparisons (resume, ranks, methods) read.
SHORT = ("finetune.max_steps=6", "finetune.log_every=1", "finetune.eval_every=0")


def ft_params(*overrides: str) -> Params:
    return load_params(None, [*FT_OVERRIDES, *overrides])


def sft_pairs(root: Path) -> Path:
    """Docstring -> body pairs from real stdlib modules (the sft_data stage), in root/sft."""
    from frontier.finetune.sft_data import build_sft_pairs
    from tests.finetune.test_sft_data import MODULES, prepared_dir

    if not (root / "sft").is_dir():
        build_sft_pairs(ft_params(), prepared_dir(root / "prepared", MODULES), root / "sft")
    return root / "sft"


def tiny_base(root: Path) -> Path:
    """A copy of the tiny pre-trained Llama (the real train stage's output, shared by the session) in root/base."""
    from tests.eval.tiny import trained_run

    if not (root / "base").is_dir():
        shutil.copytree(trained_run()["out"] / "model", root / "base")
    return root / "base"


def heldout_loss(model: Any, tokenizer: Any, heldout: Path) -> float:
    """`model`'s mean loss on the response tokens of the pairs in `heldout`, computed with transformers alone (the
    prompt masked, each pair cut to the context as finetune's dataset cuts it)."""
    from frontier.finetune.dataset import read_records

    total, count = 0.0, 0
    limit = model.config.max_position_embeddings + 1  # examples are cut to the context (+1 for the shift)
    with torch.no_grad():
        for prompt, response in read_records(heldout, tokenizer):
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = (p + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:limit]
            if len(p) >= len(ids):
                continue
            labels = torch.tensor([[-100] * len(p) + ids[len(p) :]])
            n = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=torch.tensor([ids]), labels=labels).loss) * n
            count += n
    return total / count
