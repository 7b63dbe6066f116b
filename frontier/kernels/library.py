"""How a Frontier op is registered with torch.library: one decorator for every op module.

On a GPU build an op is a ``torch.library.triton_op``: its body (PyTorch ops plus kernel launches through
``torch.library.wrap_triton``) is what torch.compile traces, so Inductor sees the Triton kernels themselves,
schedules them with the rest of the graph and keeps no opaque call. Under Triton's interpreter
(TRITON_INTERPRET=1, the CPU test suite) wrap_triton cannot trace the interpreted kernels, so the same body
is registered as an opaque ``torch.library.custom_op`` (torch.compile then calls it through its fake
implementation). Eagerly both run the same launches, so the numbers are the same bit for bit.

Each op module then registers its fake implementation (``register_fake``) and its autograd formula
(``register_autograd``) on what :func:`define_op` returns, whichever kind it is, and launches its kernels
as ``wrap_triton(kernel)[grid](...)`` (wrap_triton hands interpreted kernels back unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from frontier.kernels.dispatch import triton_available
from frontier.kernels.interpreter import INTERPRETED

NAMESPACE = "frontier"


def op_kind() -> str:
    """Which torch.library kind defines the ops here: "triton_op" (traceable) or "custom_op" (opaque)."""
    return "custom_op" if INTERPRETED or not triton_available() else "triton_op"


def define_op(
    name: str, *, mutates_args: Iterable[str] | str = ()
) -> Callable[[Callable[..., Any]], torch.library.CustomOpDef]:
    """Decorator registering ``frontier::<name>`` from a typed Python function (schema inferred from its hints).

    `mutates_args` names the arguments the op writes in place (as torch.library requires, so that autograd's
    version counters and torch.compile's functionalisation see the writes).
    """
    qualname = f"{NAMESPACE}::{name}"
    if op_kind() == "custom_op":
        return torch.library.custom_op(qualname, mutates_args=mutates_args)
    return torch.library.triton_op(qualname, mutates_args=mutates_args)
