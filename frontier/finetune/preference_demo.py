"""Offline preference pairs for the pipeline's demo, from the SFT pairs: which body belongs to this docstring?

Each SFT record ``{"prompt": <def line + docstring>, "response": <its body>}`` becomes one preference record
``{"prompt": ..., "chosen": <its own body>, "rejected": <another function's body>}``. The rejected body is
real code of the same corpus, so a model cannot tell the two apart by style: it has to relate a docstring
and signature to the body that implements them, which is what the SFT stage just taught. The other body is
the next record's in the SFT file's order (a content-hash order, so the choice is deterministic and
unrelated to the prompt); a record with the same body or the same prompt is skipped as a partner.

Only records whose prompt has at most `demo_max_prompt_chars` characters are used (a prompt that fills the model's
window leaves no completion to prefer: the preference stage drops such pairs). Train pairs come from the SFT train
split and held-out pairs from its held-out split, each pairing within
itself, so no held-out body is ever seen in training, as chosen or as rejected.
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


def pair_up(records: list[dict[str, str]], limit: int) -> list[dict[str, str]]:
    """Up to `limit` preference records: each record's own response chosen, the next other record's rejected."""
    n = len(records)
    out: list[dict[str, str]] = []
    for i, rec in enumerate(records):
        if len(out) == limit:
            break
        # the next record (cyclically) with another body and another prompt (two methods can share a signature and
        # docstring, each body then as right as the other); none when there is no such record
        other = next((o for o in (records[(i + j) % n] for j in range(1, n))
                      if o["response"] != rec["response"] and o["prompt"] != rec["prompt"]), None)  # fmt: skip
        if other is not None:
            out.append({"prompt": rec["prompt"], "chosen": rec["response"], "rejected": other["response"]})
    return out


def build_preference_pairs(params: Params, sft_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Stage: write train.jsonl, heldout.jsonl and stats.json of prompt/chosen/rejected records to `out_dir`."""
    from frontier.provenance import record_stage
    from frontier.utils.atomic import atomic_dir, write_json

    pc = params.preference
    limits = {"train": pc.demo_train_pairs, "heldout": pc.demo_heldout_pairs}
    splits: dict[str, list[dict[str, str]]] = {}
    for split in SPLITS:
        path = Path(sft_dir) / f"{split}.jsonl"
        # short prompts only: a pair whose prompt fills the model's window leaves no completion to prefer
        records = [r for r in _read_sft(path) if len(r["prompt"]) <= pc.demo_max_prompt_chars]
        splits[split] = pair_up(records, limits[split])
        if not splits[split]:
            raise DataError(
                f"{path}: no preference pair can be made (it needs two records with different prompts and responses, "
                f"prompts of at most preference.demo_max_prompt_chars={pc.demo_max_prompt_chars} characters)"
            )
    stats = {f"{split}_pairs": len(records) for split, records in splits.items()}
    with atomic_dir(out_dir) as tmp:
        for split, records in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", records)
        write_json(tmp / "stats.json", stats)
        record_stage(params, tmp, "preference_data")
    log.info("preference-data: %d train and %d held-out pairs", stats["train_pairs"], stats["heldout_pairs"])
    return stats
