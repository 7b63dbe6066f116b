"""Python face of the `torch.ops.frontier` optimizer ops: loading, fake (meta) kernels, availability.

The schemas are defined once in C++ (csrc/ops.cpp) and implemented per dispatch key (CPU in
csrc/fused_adamw_cpu.cpp, CUDA in csrc/cuda/). The fake implementations here let torch.compile
and FakeTensor trace a step without running it: both ops mutate their inputs in place and return
nothing, so the fakes only need to exist. The pure-PyTorch reference with the same semantics is
frontier/optim/reference.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from frontier.ext import load_extension

FUSED_ADAMW = "frontier::fused_adamw_"
NONFINITE_CHECK = "frontier::nonfinite_check_"


def _fused_adamw_fake(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    model_copies: list[Tensor],
    grad_scale: Tensor,
    found_inf: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    check_finite: bool,
    seed: int,
) -> None:
    return None  # in place only: outputs alias the (fake) inputs, whose metadata does not change


def _nonfinite_check_fake(tensors: list[Tensor], grad_scale: Tensor, found_inf: Tensor) -> None:
    return None


def _op_defined(qualname: str) -> bool:
    namespace, name = qualname.split("::")
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


_fakes_registered = False


def _register_fakes() -> None:
    """Register the fake kernels once the C++ schemas exist (register_fake needs the op)."""
    global _fakes_registered
    if _fakes_registered:
        return
    torch.library.register_fake(FUSED_ADAMW)(_fused_adamw_fake)
    torch.library.register_fake(NONFINITE_CHECK)(_nonfinite_check_fake)
    _fakes_registered = True


@functools.cache
def load_ops(build: bool = True) -> str:
    """Load the extension (building it when `build` and it is not installed) and register fakes.

    Returns how it was loaded ("installed" or "jit:<dir>"); raises frontier.ext.ExtensionError.
    """
    how = load_extension(build)
    _register_fakes()
    return how


_kernels: dict[str, bool] = {}


def has_kernel(device_type: str) -> bool:
    """Whether the loaded extension has a fused AdamW kernel for this device type ("cpu", "cuda")."""
    found = _kernels.get(device_type)
    if found is None:
        if not _op_defined(FUSED_ADAMW):
            return False  # not loaded (yet): ask again later
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
        found = key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(FUSED_ADAMW, key)
        _kernels[device_type] = found  # kernels are registered once, when the library loads
    return found


def fused_adamw_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    model_copies: Sequence[Tensor],
    grad_scale: Tensor,
    found_inf: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    check_finite: bool = True,
    seed: int = 0,
) -> None:
    """One AdamW step over lists of tensors, in place; semantics in csrc/ops.cpp."""
    torch.ops.frontier.fused_adamw_(
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        list(steps),
        list(model_copies),
        grad_scale,
        found_inf,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        check_finite=check_finite,
        seed=seed,
    )


def nonfinite_check_(tensors: Sequence[Tensor], grad_scale: Tensor, found_inf: Tensor) -> None:
    """Set found_inf to 1 when any tensor * grad_scale holds an inf or NaN."""
    torch.ops.frontier.nonfinite_check_(list(tensors), grad_scale, found_inf)


# torch imports this module (csrc/ops.cpp: set_python_module) when it needs a fake kernel of an op
# that is already loaded; register them then.
if _op_defined(FUSED_ADAMW):
    _register_fakes()
