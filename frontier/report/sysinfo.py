"""The report's "System" table: the training machine's provenance record, flattened.

It is what frontier.provenance recorded when training started (runs/train/provenance.json), not the
machine that renders the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frontier.provenance import PROVENANCE_FILE, read_provenance


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[name] = value
        else:
            out[name] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out


def system_info(run_dir: str | Path) -> dict[str, Any]:
    """A flat mapping of names to printable values from `run_dir`'s provenance record."""
    record = read_provenance(run_dir)
    if record is None:
        return {"provenance": f"none recorded ({Path(run_dir) / PROVENANCE_FILE} is missing or unreadable)"}
    return _flatten(record)
