"""FusedAdamW: torch.optim.AdamW semantics on the multi-tensor `frontier::fused_adamw_` op.

A drop-in torch.optim.Optimizer: standard param_groups (lr schedulers work), the state layout of
torch.optim.AdamW (per-param "step", "exp_avg", "exp_avg_sq"), so state dicts load into and from
torch.optim.AdamW; usable as DeepSpeed's client optimizer. On top of AdamW it offers, fused into
the same pass over memory:

- `grad_scale` (step argument): grads are multiplied by it (loss-unscale x clip coefficient);
- an inf/NaN check (`check_finite`): a step whose scaled grads hold inf/NaN changes nothing and
  `last_step_skipped()` reports it. It costs one more read of the grads (32 instead of 28
  bytes/param); turn it off when the caller already checks (DeepSpeed's fp16 loss scaler does);
- `state_dtype="bf16"`: exp_avg / exp_avg_sq stored in bf16 with stochastic rounding, 20 instead
  of 28 bytes/param of traffic. Each store is unbiased and within one bf16 ulp (relative error
  < 2^-7); the step itself uses the unrounded fp32 states. Stated (and tested) bound: after T
  steps the params stay within RMS 0.03 * lr * sqrt(T) of an fp32-state run with the same grads;
  round-to-nearest would instead freeze slow averages (tests/optim/test_bf16_states.py);
- `set_model_copies`: bf16 copies of fp32 master params written in the same pass.

Each step makes one op call per (device, dtypes) bucket of each param group. Devices without a
kernel in the extension (or params that are not contiguous) use the bit-identical PyTorch reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from frontier.ext import ExtensionError
from frontier.optim import ops
from frontier.optim.reference import fused_adamw_reference_, nonfinite_check_reference_

log = logging.getLogger(__name__)

STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# what the kernels take; other params (fp16, fp64, non-contiguous) go through the reference
KERNEL_PARAM_DTYPES = (torch.float32, torch.bfloat16)
KERNEL_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) over lists of tensors in one fused op.

    Args mirror torch.optim.AdamW; amsgrad / maximize are not supported. Keyword-only extras:
    state_dtype ("fp32" | "bf16"), check_finite (skip steps with inf/NaN grads), seed (stream of
    the stochastic rounding; the step count and tensor position are mixed in).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        state_dtype: str = "fp32",
        check_finite: bool = True,
        seed: int = 0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps > 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"Invalid state_dtype: {state_dtype!r} (expected one of {sorted(STATE_DTYPES)})")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": False,
            "maximize": False,
            "state_dtype": state_dtype,
        }
        super().__init__(params, defaults)
        self.check_finite = check_finite
        self.seed = seed
        self._model_copies: dict[Tensor, Tensor] = {}
        self._found_inf: dict[torch.device, Tensor] = {}
        self._grad_scale: dict[torch.device, Tensor] = {}
        try:
            ops.load_ops()
        except ExtensionError as exc:
            log.warning("FusedAdamW: %s; using the (slow) PyTorch reference implementation", exc)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim.AdamW state dicts carry no state_dtype: keep this optimizer's
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("state_dtype", self.defaults["state_dtype"])
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)

    def set_model_copies(self, pairs: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Write a bf16 copy of each (fp32 master param, bf16 model tensor) pair in every step.

        The copies are filled from the masters now, so they agree from the start.
        """
        params = {p for group in self.param_groups for p in group["params"]}
        for master, copy in pairs:
            if master not in params:
                raise ValueError("set_model_copies: master tensor is not a parameter of this optimizer")
            if master.dtype != torch.float32 or copy.dtype != torch.bfloat16:
                raise ValueError(
                    f"set_model_copies: need fp32 master and bf16 copy, got {master.dtype} and {copy.dtype}"
                )
            if copy.shape != master.shape or copy.device != master.device or not copy.is_contiguous():
                raise ValueError(
                    "set_model_copies: the copy must be a contiguous tensor of the master's shape and device"
                )
            with torch.no_grad():
                copy.copy_(master)
            self._model_copies[master] = copy

    def last_step_skipped(self) -> bool:
        """Whether the last step found inf/NaN grads and changed nothing (synchronizes the device)."""
        return any(bool(flag.item()) for flag in self._found_inf.values())

    def _flag(self, cache: dict[torch.device, Tensor], device: torch.device, value: float) -> Tensor:
        if device not in cache:
            cache[device] = torch.empty(1, dtype=torch.float32, device=device)
        return cache[device].fill_(value)

    def _state(self, p: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
        """The param's state, created on first use and normalized after loading a state dict."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
            return state
        step = state["step"]
        if not torch.is_tensor(step) or step.device != p.device or step.dtype != torch.float32:
            state["step"] = torch.as_tensor(step, dtype=torch.float32).to(p.device).reshape(())
        for key in ("exp_avg", "exp_avg_sq"):  # torch.optim.AdamW states arrive in the param's dtype
            if state[key].dtype != state_dtype or state[key].device != p.device:
                state[key] = state[key].to(device=p.device, dtype=state_dtype)
        return state

    def _buckets(self, group: dict[str, Any]) -> list[_Bucket]:
        """Group the params with grads by everything one op call must share."""
        state_dtype = STATE_DTYPES[group["state_dtype"]]
        buckets: dict[tuple, _Bucket] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("FusedAdamW does not support sparse gradients")
            grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
            state = self._state(p, state_dtype)
            copy = self._model_copies.get(p)
            fused = (
                ops.has_kernel(p.device.type)
                and p.is_contiguous()
                and p.dtype in KERNEL_PARAM_DTYPES
                and grad.dtype in KERNEL_GRAD_DTYPES
            )
            key = (p.device, p.dtype, grad.dtype, copy is not None, fused)
            if key not in buckets:
                buckets[key] = _Bucket(group, p.device, fused)
            buckets[key].add(p, grad, state, copy)
        return list(buckets.values())

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], float] | None = None,
        *,
        grad_scale: float | Tensor | None = None,
        found_inf: Tensor | None = None,
    ) -> Any:
        """One AdamW step; grads are multiplied by `grad_scale` first (default 1).

        `found_inf`: the caller's verdict on this step, a 1-element tensor (nonzero: skip the step,
        changing nothing), read on the device, never on the host. It replaces the optimizer's own
        inf/NaN check (`check_finite`), so it must cover the grads: a trainer that has checked the
        gradient norm saves the second read of every grad.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise RuntimeError("FusedAdamW supports neither amsgrad nor maximize")
        buckets = [b for group in self.param_groups for b in self._buckets(group)]
        devices = {b.device for b in buckets}
        scale = {d: self._scale(d, grad_scale) for d in devices}
        found = {d: self._flag(self._found_inf, d, 0.0) for d in devices}
        if found_inf is not None:
            for flag in found.values():
                flag.copy_(found_inf.detach().reshape(1), non_blocking=True)  # device to device: no sync
        check = self.check_finite and found_inf is None
        # One bucket checks inside its own op; several are all checked before any is updated.
        check_inside = check and len(buckets) == 1
        if check and len(buckets) > 1:
            for b in buckets:
                check = ops.nonfinite_check_ if b.fused else nonfinite_check_reference_
                check(b.grads, scale[b.device], found[b.device])
            _share_flags(found)
        for number, b in enumerate(buckets):
            update = ops.fused_adamw_ if b.fused else fused_adamw_reference_
            beta1, beta2 = b.group["betas"]
            update(
                b.params,
                b.grads,
                b.exp_avgs,
                b.exp_avg_sqs,
                b.steps,
                b.copies,
                scale[b.device],
                found[b.device],
                lr=float(b.group["lr"]),
                beta1=float(beta1),
                beta2=float(beta2),
                eps=float(b.group["eps"]),
                weight_decay=float(b.group["weight_decay"]),
                check_finite=check_inside,
                seed=(self.seed * 1_000_003 + number) & (2**63 - 1),  # one rounding stream per call
            )
        return loss

    def _scale(self, device: torch.device, grad_scale: float | Tensor | None) -> Tensor:
        if torch.is_tensor(grad_scale):
            return grad_scale.detach().to(device=device, dtype=torch.float32).reshape(1)
        return self._flag(self._grad_scale, device, 1.0 if grad_scale is None else float(grad_scale))


class _Bucket:
    """The lists of one op call: params of one group sharing device, dtypes and kernel."""

    def __init__(self, group: dict[str, Any], device: torch.device, fused: bool) -> None:
        self.group, self.device, self.fused = group, device, fused
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.exp_avgs: list[Tensor] = []
        self.exp_avg_sqs: list[Tensor] = []
        self.steps: list[Tensor] = []
        self.copies: list[Tensor] = []

    def add(self, p: Tensor, grad: Tensor, state: dict[str, Tensor], copy: Tensor | None) -> None:
        self.params.append(p)
        self.grads.append(grad)
        self.exp_avgs.append(state["exp_avg"])
        self.exp_avg_sqs.append(state["exp_avg_sq"])
        self.steps.append(state["step"])
        if copy is not None:
            self.copies.append(copy)


def _share_flags(found: dict[torch.device, Tensor]) -> None:
    """With params on several devices, a non-finite grad on any of them skips the step on all."""
    if len(found) < 2:
        return
    flags = list(found.values())
    total = torch.stack([f.to(flags[0].device) for f in flags]).amax(0)
    for f in flags:
        f.copy_(total)
