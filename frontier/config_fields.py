"""Field helpers for section schemas (kept apart from frontier.config to avoid an import cycle)."""

from __future__ import annotations


def bounds(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> dict[str, float]:
    """Field metadata for a numeric range: ``field(default=0.1, metadata=bounds(ge=0, lt=1))``."""
    return {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
