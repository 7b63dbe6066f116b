"""System information for the report: the same facts as `frontier env`, flattened for a table."""

from __future__ import annotations

import os
from typing import Any

from frontier.utils.envinfo import collect_env


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


def system_info() -> dict[str, Any]:
    """A flat mapping of names to printable values (versions, extension ops, CPUs, GPUs)."""
    info = _flatten(collect_env())
    info.setdefault("cpus", os.cpu_count())
    return info
