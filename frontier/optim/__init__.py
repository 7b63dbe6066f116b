"""frontier.optim: AdamW on the C++/CUDA extension (FusedAdamW) and the optimizer factory.

Exports load lazily, so `frontier.config.optimizer` (read by the config loader) never imports torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "FusedAdamW": "frontier.optim.fused_adamw",
    "build_optimizer": "frontier.optim.build",
    "resolve_impl": "frontier.optim.build",
    "OptimizerConfig": "frontier.config.optimizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'frontier.optim' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
