"""Field helpers for section schemas: numeric bounds, relative paths."""

from __future__ import annotations


def bounds(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> dict[str, float]:
    """Field metadata for a numeric range: ``field(default=0.1, metadata=bounds(ge=0, lt=1))``."""
    return {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}


def check_relative_path(key: str, value: str) -> None:
    """A directory a stage writes into, named in params: relative, inside the workspace (no ``..``).

    Raises ValueError("key: why") for a section's validate(); what is at the path (a planted link) is
    checked when the directory is opened for writing.
    """
    from pathlib import PurePosixPath

    path = PurePosixPath(value)
    if not value.strip() or path.is_absolute() or ".." in path.parts or "\\" in value or "\0" in value:
        raise ValueError(
            f"{key}: {value!r} must be a relative path inside the workspace (no leading '/', no '..'), e.g. 'dvclive'"
        )
