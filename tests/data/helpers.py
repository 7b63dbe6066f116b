"""Helpers for the data-stage tests: params built from plain mappings, tiny corpora in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frontier.config import Params, build_params


def make_params(prepare: dict[str, Any] | None = None, **sections: Any) -> Params:
    """Validated Params; near dedup and filters stay at their defaults unless overridden."""
    data: dict[str, Any] = {"prepare": prepare or {}, **sections}
    return build_params(data, "test")


def files_source(path: Path | str, name: str = "corpus", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "files", "path": str(path), **extra}


def doc_text(i: int, words: int = 60) -> str:
    """A distinct document: its words depend on i, so shingles barely overlap between documents."""
    return " ".join(f"w{i}_{j} v{(i * 7919 + j * 104729) % 100003}" for j in range(words)) + "\n"


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
