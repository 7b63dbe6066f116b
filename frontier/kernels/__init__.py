"""Fused ops: Triton kernels, each with a pure-PyTorch reference that is also the fallback.

``from frontier.kernels import rms_norm, rope, swiglu, attention, cross_entropy`` gives the public op
functions. Everything is imported lazily (PEP 562): ``frontier.config`` imports
``frontier.config.kernels``, and the CLI must not pay for torch and Triton just to read a parameter file.

Each op lives in a submodule of the same name (``frontier.kernels.rms_norm`` defines ``rms_norm``).
Python binds a submodule on its package when it is first imported, which would make the attribute
``frontier.kernels.rms_norm`` the module or the function depending on import order; here it is always
the function, as with an eager ``from .rms_norm import rms_norm`` re-export. So reach a submodule's other
names with ``from frontier.kernels.rms_norm import rms_norm_reference`` (or ``sys.modules``), not with
``import frontier.kernels.rms_norm as m``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "resolve_impl": "frontier.kernels.dispatch",
    "triton_available": "frontier.kernels.dispatch",
    "rms_norm": "frontier.kernels.rms_norm",
    "rms_norm_reference": "frontier.kernels.rms_norm",
    "rope": "frontier.kernels.rope",
    "rope_reference": "frontier.kernels.rope",
    "swiglu": "frontier.kernels.swiglu",
    "swiglu_reference": "frontier.kernels.swiglu",
    "attention": "frontier.kernels.attention",
    "cross_entropy": "frontier.kernels.cross_entropy",
    "fused_linear_cross_entropy": "frontier.kernels.fused_linear_cross_entropy",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'frontier.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook (a plain dict write, not a setattr)
    return value


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importlib's "bind the loaded submodule on its package" must not hide the op of the same name.
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
