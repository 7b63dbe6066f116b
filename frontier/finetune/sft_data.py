"""Offline fine-tune data from the prepared corpus: docstring -> function body pairs.

Every function (or method) with a docstring in the prepared Python documents becomes one record
``{"prompt": <def line(s) + docstring>, "response": <the rest of the body>}``, dedented to column
0. Pairs are deduplicated and ordered by a hash of their content, and the same hash decides
the held-out split, so the output depends only on the corpus contents, never on file order.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontier.errors import DataError

if TYPE_CHECKING:
    from frontier.config import Params
    from frontier.config.finetune import FinetuneConfig

log = logging.getLogger(__name__)

_SPLITS = ("train.jsonl", "val.jsonl")


def _dedent(lines: list[str], indent: int) -> list[str] | None:
    """Remove `indent` leading spaces from each line; None if a non-blank line has less."""
    out = []
    for line in lines:
        if not line.strip():
            out.append("\n")
        elif line[:indent].strip() or len(line) - len(line.lstrip()) < indent:
            return None  # e.g. a multi-line string flush with the margin: cannot dedent faithfully
        else:
            out.append(line[indent:])
    return out


def extract_pairs(source: str) -> Iterator[tuple[str, str]]:
    """(prompt, response) for each function with a docstring and at least one more statement.

    Raises SyntaxError (or ValueError for NUL bytes) when `source` is not Python.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old code are not our concern
        tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if ast.get_docstring(node) is None or len(node.body) < 2:
            continue
        doc, first = node.body[0], node.body[1]
        if doc.end_lineno is None or node.end_lineno is None or first.lineno <= doc.end_lineno:
            continue  # code shares the docstring's line: no clean split
        head = _dedent(lines[node.lineno - 1 : doc.end_lineno], node.col_offset)
        body = _dedent(lines[doc.end_lineno : node.end_lineno], node.col_offset)
        if head is None or body is None:
            continue
        prompt, response = "".join(head), "".join(body).rstrip() + "\n"
        yield prompt, response.lstrip("\n")


def _documents(prepared_dir: Path) -> Iterator[tuple[str, str]]:
    """(file name:line, text) of every prepared document, train then val."""
    found = False
    for name in _SPLITS:
        path = prepared_dir / name
        if not path.is_file():
            continue
        found = True
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f'{path}:{lineno}: expected a JSON object with a "text" field') from None
                yield f"{name}:{lineno}", text
    if not found:
        raise DataError(f"{prepared_dir}: neither {' nor '.join(_SPLITS)} found (run the prepare stage)")


def _hash_fraction(digest: str) -> float:
    return int(digest[:13], 16) / 16**13


def collect_pairs(
    prepared_dir: Path, cfg: FinetuneConfig
) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, Any]]:
    """(train records, held-out records, stats) from the prepared documents under `cfg` filters."""
    stats: Counter[str] = Counter()
    unique: dict[str, dict[str, str]] = {}
    for _where, text in _documents(Path(prepared_dir)):
        stats["documents"] += 1
        try:
            pairs = list(extract_pairs(text))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            stats["documents_not_python"] += 1
            continue
        for prompt, response in pairs:
            stats["functions_with_docstrings"] += 1
            if not cfg.min_response_chars <= len(response) <= cfg.max_response_chars:
                stats["dropped_response_length"] += 1
                continue
            if len(prompt) > cfg.max_prompt_chars:
                stats["dropped_prompt_length"] += 1
                continue
            digest = hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()
            if digest in unique:
                stats["duplicates"] += 1
                continue
            unique[digest] = {"prompt": prompt, "response": response}
    ordered = sorted(unique)  # content-hash order: a deterministic shuffle
    if cfg.max_pairs is not None:
        ordered = ordered[: cfg.max_pairs]
    held = [unique[d] for d in ordered if _hash_fraction(d[::-1]) < cfg.heldout_fraction]
    train = [unique[d] for d in ordered if _hash_fraction(d[::-1]) >= cfg.heldout_fraction]
    out = dict(stats)
    out.update(pairs=len(ordered), train=len(train), heldout=len(held))
    return train, held, out


def write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def build_sft_pairs(params: Params, prepared_dir: Path, out_dir: Path) -> dict:
    """Stage: write train.jsonl, heldout.jsonl and stats.json of prompt/response pairs to `out_dir`."""
    from frontier.provenance import record_stage
    from frontier.utils.atomic import atomic_dir, write_json

    cfg = params.finetune
    train, held, stats = collect_pairs(Path(prepared_dir), cfg)
    if not train or not held:
        raise DataError(
            f"{prepared_dir}: {stats['pairs']} docstring/body pairs give {len(train)} train and {len(held)} held-out "
            "records; both must be non-empty (more Python documents, or another finetune.heldout_fraction)"
        )
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "heldout.jsonl", held)
        write_json(tmp / "stats.json", stats)
        record_stage(params, tmp, "sft_data")
    log.info("sft-data: %d train and %d held-out pairs", len(train), len(held))
    return stats
