"""Offline preference pairs for the pipeline's demo, from the SFT pairs: the whole body over an unfinished one.

Each SFT record ``{"prompt": <def line + docstring>, "response": <its body>}`` whose body has two lines or more
becomes one preference record ``{"prompt": ..., "chosen": <the body>, "rejected": <its first line only>}``: the
preference for implementations that are finished over ones cut short (a stub, a block opened and never
filled). The two completions agree on their first line and part where the rejected one ends, so DPO learns from
the one place they differ, and what it learns (do not stop a function after one line) carries over to prompts
it never saw: on the default run the held-out accuracy goes from 0 to 0.84 (docs/performance.md).

Only records whose prompt has at most `demo_max_prompt_chars` characters are used (a prompt that fills the model's
window leaves no completion to prefer: the preference stage drops such pairs). Train pairs come from the SFT train
split and held-out pairs from its held-out split, in the SFT files' order (a content-hash order).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontier.errors import DataError
from frontier.finetune.sft_data import write_jsonl
from frontier.utils.jsonl import iter_jsonl

if TYPE_CHECKING:
    from frontier.config import Params

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")


def _read_sft(path: Path) -> list[dict[str, str]]:
    """The prompt/response records of one SFT split file (what the sft-data stage writes)."""
    records = []
    for where, rec in iter_jsonl(path, "the sft-data stage writes it"):
        if not (isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str)):
            raise DataError(f'{where}: expected string "prompt" and "response" fields')
        if not rec["prompt"].strip() or not rec["response"].strip():
            raise DataError(f"{where}: an empty prompt or response makes no preference pair")
        records.append({"prompt": rec["prompt"], "response": rec["response"]})
    return records


def demo_pair(record: dict[str, str]) -> dict[str, str] | None:
    """The preference record of one SFT record: its body chosen, the body's first line rejected (None: the body
    has a single non-blank line, so there is nothing shorter to reject)."""
    lines = record["response"].splitlines(keepends=True)
    if sum(1 for line in lines if line.strip()) < 2:
        return None
    first = lines[0] if lines[0].endswith("\n") else lines[0] + "\n"
    return {"prompt": record["prompt"], "chosen": record["response"], "rejected": first}


def build_preference_pairs(params: Params, sft_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Stage: write train.jsonl, heldout.jsonl and stats.json of prompt/chosen/rejected records to `out_dir`."""
    from frontier.provenance import record_stage
    from frontier.utils.atomic import atomic_dir, write_json

    pc = params.preference
    limits = {"train": pc.demo_train_pairs, "heldout": pc.demo_heldout_pairs}
    splits: dict[str, list[dict[str, str]]] = {}
    for split in SPLITS:
        path = Path(sft_dir) / f"{split}.jsonl"
        pairs = []
        for record in _read_sft(path):
            # short prompts only: a pair whose prompt fills the model's window leaves no completion to prefer
            pair = demo_pair(record) if len(record["prompt"]) <= pc.demo_max_prompt_chars else None
            if pair is not None and len(pairs) < limits[split]:
                pairs.append(pair)
        if not pairs:
            raise DataError(
                f"{path}: no preference pair can be made (it needs a record whose body has two lines or more and "
                f"whose prompt has at most preference.demo_max_prompt_chars={pc.demo_max_prompt_chars} characters)"
            )
        splits[split] = pairs
    stats = {f"{split}_pairs": len(records) for split, records in splits.items()}
    with atomic_dir(out_dir) as tmp:
        for split, records in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", records)
        write_json(tmp / "stats.json", stats)
        record_stage(params, tmp, "preference_data")
    log.info("preference-data: %d train and %d held-out pairs", stats["train_pairs"], stats["heldout_pairs"])
    return stats
