"""Reading JSONL files of records, with errors that name the file and line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frontier.errors import DataError

# A line is read whole to be parsed: this bounds what one line may cost (a file with no newline at all
# would otherwise be read into memory in one piece). Far above any record the stages write.
MAX_LINE_BYTES = 256 << 20
# json.loads turns a "\ud800" escape into a lone surrogate, which no UTF-8 writer accepts later on;
# only lines holding such an escape are checked in full.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadJson(ValueError):
    """A line that is not JSON; the message says why (the caller adds file and line)."""


def parse_json(text: str) -> Any:
    """json.loads with each way a hostile line fails it as one BadJson: malformed, an integer past
    Python's digit limit (a ValueError), nesting deeper than the interpreter's stack (RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadJson(f"{exc.msg} at column {exc.colno}") from None
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits()
        raise BadJson(f"{exc.__class__.__name__}: {str(exc)[:120]}") from None
    except RecursionError:
        raise BadJson("nested too deeply") from None


def iter_jsonl(
    path: str | Path, missing_hint: str = "", *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", record)`` for each non-blank line of `path`, each a JSON object.

    A missing file, or a line that is too long, not UTF-8, not JSON (an integer past Python's digit
    limit and nesting too deep included), not an object or holding a lone surrogate, raises DataError
    naming file:line. `missing_hint` says which stage writes the file (for the not-found message).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found" + (f" ({missing_hint})" if missing_hint else ""))
    with open(path, "rb") as f:
        lineno = 0
        while line := f.readline(max_line_bytes + 1):
            lineno += 1
            where = f"{path}:{lineno}"
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                raise DataError(f"{where}: line longer than {max_line_bytes} bytes")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 (byte {exc.start} of the line)") from None
            try:
                rec = parse_json(text)
            except BadJson as exc:
                raise DataError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            if _SURROGATE_ESCAPE.search(text):
                try:
                    json.dumps(rec, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(f"{where}: a string holds a lone surrogate escape (\\ud800-\\udfff)") from None
            yield where, rec
