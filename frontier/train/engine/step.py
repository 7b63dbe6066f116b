"""One optimizer step over a global batch, with the loss normalised over the whole global batch.

The loss of a step is ``sum of token losses / number of non-masked tokens`` over every
micro-batch of every rank, not a mean of micro-batch means (which would over-weight short,
padded micro-batches). So the global token count N is all-reduced first; each micro-batch's
summed loss S is then back-propagated as ``S * (A * W / N)``. DeepSpeed divides what it is
given by the accumulation steps A (engine.backward) and averages gradients over the W
data-parallel ranks; the factor A*W cancels both exactly, leaving the gradient of
``sum(S) / N``.

A step whose loss or gradients are non-finite on any rank is skipped: DeepSpeed's bookkeeping
runs, the weights and optimizer moments do not change.

No host sync on the common path. With whole fp32 gradients (ZeRO-0, no fp16/bf16:
frontier.train.engine.engine.WholeGrads) the token count is summed as a device tensor, and whether the
step is skipped is a device flag (``found_inf``: the summed loss or the gradient norm is
non-finite) that the StepGate hands to the optimizer, as torch's GradScaler does: nothing waits
for the device. The step's figures stay on the device (StepResult) and StepLog keeps them
until the loop reads them all, once, at its next sync point (a log step). Other layouts (ZeRO
1-3, fp16, bf16) keep the host-side decision: DeepSpeed's own wrappers read their overflow flags and norms on the host
there, so the step syncs anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from frontier.train.batches.data import Batch, local_targets
from frontier.train.engine.engine import WholeGrads, clip_whole_grads, whole_grads
from frontier.train.engine.stability import StepGate
from frontier.train.launch.distributed import DistInfo, all_reduce_sum, peer_errors

Number = float | torch.Tensor  # a Python number, or a 0-dim tensor on the device not yet read


@dataclass
class StepResult:
    """One step's figures; from run_step, tensors on the device, from StepLog.read, host numbers."""

    loss: Number  # mean token loss of the global batch (nan/inf when non-finite)
    targets: Number  # non-masked tokens in the global batch
    grad_norm: Number | None  # None when DeepSpeed reports none
    skipped: Number  # 1 when the step was non-finite and its update skipped, else 0

    @property
    def finite(self) -> bool:
        """Loss and gradients finite, the update applied (reads `skipped`: a sync when it is on the device)."""
        return float(self.skipped) == 0.0


def run_step(
    engine: Any, batches: list[Batch], info: DistInfo, gate: StepGate, targets: int | None = None
) -> StepResult:
    """Forward/backward every micro-batch of this rank, then the optimizer update (all ranks together).

    `targets`: this rank's non-masked token count when the caller already has it (the prefetcher
    counts it before the batches are moved to the device); otherwise counted here from `batches`.
    """
    n_local = local_targets(batches) if targets is None else targets
    grads = whole_grads(engine)
    if grads is not None:
        return _run_on_device(engine, batches, info, gate, grads, n_local)
    return _run_on_host(engine, batches, info, gate, n_local)


def _all_reduce_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `t` over ranks in place, on its device (an NCCL all-reduce does not block the host)."""
    if info.world_size > 1:
        with peer_errors(info, "all-reduce"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _run_on_device(
    engine: Any, batches: list[Batch], info: DistInfo, gate: StepGate, grads: WholeGrads, n_local: int
) -> StepResult:
    factor = len(batches) * info.world_size
    n_global: Number
    if info.world_size == 1:
        n_global = float(n_local)  # known on the host: nothing to sum
        scale: Number = factor / max(n_global, 1.0)
    else:
        # torch.full, not torch.tensor: a host-to-device copy of pageable memory would sync the stream
        n_global = _all_reduce_(torch.full((), float(n_local), dtype=torch.float64, device=info.device), info)
        scale = factor / n_global.clamp(min=1.0)
    local_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    for i, batch in enumerate(batches):
        loss_sum = engine(**batch.model_inputs(info.device))  # fp32 scalar
        local_sum += loss_sum.detach().double()
        engine.backward(loss_sum * scale)
        if i == len(batches) - 1:  # the accumulation boundary: this engine.step updates the weights
            total = _all_reduce_(local_sum, info)  # a non-finite loss on any rank makes the sum non-finite
            norm = clip_whole_grads(grads)  # of the averaged grads: the same on every rank
            skipped = (~(torch.isfinite(total) & torch.isfinite(norm))).double()
            gate.found_inf = skipped
        try:
            engine.step()  # DeepSpeed counts micro-batches: one call after each backward
        finally:
            gate.found_inf = None
    mean = total / (n_global.clamp(min=1.0) if torch.is_tensor(n_global) else max(n_global, 1.0))
    return StepResult(loss=mean, targets=n_global, grad_norm=norm, skipped=skipped)


def _run_on_host(engine: Any, batches: list[Batch], info: DistInfo, gate: StepGate, n_local: int) -> StepResult:
    """ZeRO 1-3, fp16, bf16: DeepSpeed owns norm and clipping and reads its flags on the host."""
    (n_global,) = all_reduce_sum([float(n_local)], info)
    scale = len(batches) * info.world_size / max(n_global, 1.0)
    local_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    finite = True
    for i, batch in enumerate(batches):
        loss_sum = engine(**batch.model_inputs(info.device))  # fp32 scalar
        local_sum += loss_sum.detach().double()
        if i == len(batches) - 1:
            total, bad = all_reduce_sum([local_sum.item(), float(not math.isfinite(local_sum.item()))], info)
            finite = bad == 0
        engine.backward(loss_sum * scale)
        gate.skip = i == len(batches) - 1 and not finite
        try:
            engine.step()  # DeepSpeed counts micro-batches: one call after each backward
        finally:
            gate.skip = False
    norm = engine.get_global_grad_norm()
    if not engine.fp16_enabled() and not engine.was_step_applied():
        finite = False  # DeepSpeed found inf/nan gradients and skipped the step itself
    return StepResult(
        loss=total / max(n_global, 1.0),
        targets=n_global,
        grad_norm=float(norm) if norm is not None else None,
        skipped=0.0 if finite else 1.0,
    )


class StepLog:
    """Each step's figures kept on the device until `read` brings all of them to the host in one sync.

    A step appends one (4,) tensor (loss, grad norm, skipped, target tokens); reading stacks them,
    so the loop sees every step's figures, as if it had read them at once: the NaN guard, alerts
    and log rows run per step on the host, only later (at the next sync point).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._rows: list[torch.Tensor] = []  # (4,) float64 each
        self._has_norm: list[bool] = []

    @property
    def steps(self) -> int:
        """Steps added since the last read."""
        return len(self._rows)

    def add(self, result: StepResult) -> None:
        norm = result.grad_norm if result.grad_norm is not None else math.nan
        row = [self._on_device(x) for x in (result.loss, norm, result.skipped, result.targets)]
        self._rows.append(torch.stack(row))  # (4,)
        self._has_norm.append(result.grad_norm is not None)

    def _on_device(self, x: Number) -> torch.Tensor:
        if torch.is_tensor(x):
            return x.to(dtype=torch.float64).reshape(())
        # torch.full, not torch.tensor: a host-to-device copy of pageable memory would sync the stream
        return torch.full((), float(x), dtype=torch.float64, device=self.device)

    def read(self) -> list[StepResult]:
        """The steps since the last read, oldest first, with host numbers (one sync); the log is emptied."""
        if not self._rows:
            return []
        values = torch.stack(self._rows).tolist()  # (steps, 4)
        out = [
            StepResult(loss=loss, targets=int(targets), grad_norm=norm if has else None, skipped=skipped)
            for (loss, norm, skipped, targets), has in zip(values, self._has_norm)
        ]
        self._rows, self._has_norm = [], []
        return out


@torch.no_grad()
def evaluate(engine: Any, batches: list[Batch], info: DistInfo) -> float:
    """Mean token loss over the fixed validation batches of all ranks (every rank runs the same count)."""
    engine.eval()
    try:
        local = torch.zeros((), dtype=torch.float64, device=info.device)
        count = 0
        for batch in batches:
            local += engine(**batch.model_inputs(info.device)).double()
            count += batch.num_targets
    finally:
        engine.train()
    total, n = all_reduce_sum([local.item(), float(count)], info)
    return total / max(n, 1.0)
