"""Reading JSONL files of records, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frontier.errors import DataError


def iter_jsonl(path: str | Path, missing_hint: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", record)`` for each non-blank line of `path`, each a JSON object.

    A missing file, a line that is not JSON or not an object raises DataError naming file:line.
    `missing_hint` says which stage writes the file (for the not-found message).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found" + (f" ({missing_hint})" if missing_hint else ""))
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, rec
