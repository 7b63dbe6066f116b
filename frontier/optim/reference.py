"""Pure-PyTorch reference of the fused AdamW ops, bit for bit.

Same signature and semantics as `torch.ops.frontier.fused_adamw_` / `nonfinite_check_`
(csrc/ops.cpp), written with plain tensor ops in the kernels' operation order and with their
stochastic-rounding hash, so on finite inputs the C++/CUDA kernels must reproduce it exactly —
which is what tests/optim/test_fused_adamw_op.py checks. FusedAdamW also falls back to it for
devices the extension has no kernel for (slow: one sync and ~15 tensor ops per tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mix32_int(x: int) -> int:
    """csrc/adamw_math.h mix32 on a Python int."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sr_key(seed: int, tensor_index: int, step: int) -> int:
    """The stochastic-rounding key of one tensor at one step (csrc/adamw_math.h sr_key)."""
    seed &= (1 << 64) - 1
    k = _mix32_int((seed & _M32) ^ 0x85EBCA6B)
    k = _mix32_int(k ^ (seed >> 32))
    k = _mix32_int(k ^ ((tensor_index * 0xC2B2AE35) & _M32))
    return _mix32_int((k + step) & _M32)


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 tensors holding uint32 values, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def sr_random(key: int, numel: int, device: torch.device) -> Tensor:
    """32 random bits per element index (csrc/adamw_math.h sr_random), as int64."""
    index = torch.arange(numel, dtype=torch.int64, device=device) & _M32
    x = _mul32(index ^ key, 0x9E3779B9)
    return x ^ (x >> 16)


def _bits(x: Tensor) -> Tensor:
    return x.view(torch.int32).to(torch.int64) & _M32


def _bf16_from_bits(bits: Tensor) -> Tensor:
    return ((bits ^ 0x8000) - 0x8000).to(torch.int16).view(torch.bfloat16)


def bf16_stochastic_round(x: Tensor, random16: Tensor) -> Tensor:
    """fp32 -> bf16 rounding away from zero with probability equal to the dropped fraction."""
    bits = _bits(x)
    out = ((bits + torch.where(torch.isnan(x), 0, random16)) >> 16) & 0xFFFF  # NaN: truncated
    return _bf16_from_bits(out)


def adamw_coeffs(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: float) -> dict:
    """The per-tensor coefficients of csrc/adamw_math.h adamw_coeffs, as Python floats (double)."""
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    return {
        "decay": 1.0 - lr * weight_decay,
        "w1": 1.0 - beta1,
        "beta2": beta2,
        "w2": 1.0 - beta2,
        "neg_step": -(lr * bc2_sqrt / bc1),
        "eps_hat": eps * bc2_sqrt,
    }


def nonfinite_check_reference_(tensors: Sequence[Tensor], grad_scale: Tensor, found_inf: Tensor) -> None:
    """Set found_inf to 1 when any tensor * grad_scale holds an inf or NaN."""
    scale = grad_scale.reshape(()).float()
    for t in tensors:
        if not bool(torch.isfinite(t.float() * scale).all()):
            found_inf.fill_(1.0)
            return


def fused_adamw_reference_(
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
    """frontier::fused_adamw_ in plain PyTorch (see csrc/ops.cpp for the semantics)."""
    if check_finite and float(found_inf.reshape(())) == 0.0:
        nonfinite_check_reference_(grads, grad_scale, found_inf)
    if float(found_inf.reshape(())) != 0.0:
        return
    scale = grad_scale.reshape(()).float()
    for i, (p, g, m, v, step_t) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
        step_t.add_(1.0)
        step = float(step_t.reshape(()))
        c = {
            k: torch.tensor(x, dtype=torch.float32, device=p.device)
            for k, x in adamw_coeffs(lr, beta1, beta2, eps, weight_decay, step).items()
        }
        g32 = g.float() * scale
        p32 = p.float() * c["decay"]
        m32 = m.float()
        m32 = m32 + c["w1"] * (g32 - m32)
        v32 = v.float() * c["beta2"]
        v32 = v32 + (c["w2"] * g32) * g32
        # sqrt through float64: torch's vectorized fp32 sqrt is not always correctly rounded (MKL VML)
        p32 = p32 + (c["neg_step"] * m32) / (v32.double().sqrt().float() + c["eps_hat"])
        p.copy_(p32)  # round to nearest even for bf16 params
        if m.dtype == torch.bfloat16:
            r = sr_random(sr_key(seed, i, int(step)), m.numel(), m.device).view(m.shape)
            m.copy_(bf16_stochastic_round(m32, r & 0xFFFF))
            v.copy_(bf16_stochastic_round(v32, r >> 16))
        else:
            m.copy_(m32)
            v.copy_(v32)
        if model_copies:
            model_copies[i].copy_(p32)
