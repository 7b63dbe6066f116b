"""One optimizer step over a global batch, with the loss normalised over the whole global batch.

The loss of a step is ``sum of token losses / number of non-masked tokens`` over every
micro-batch of every rank, not a mean of micro-batch means (which would over-weight short,
padded micro-batches). So the global token count N is all-reduced first; each micro-batch's
summed loss S is then back-propagated as ``S * (A * W / N)``. DeepSpeed divides what it is
given by the accumulation steps A (engine.backward) and averages gradients over the W
data-parallel ranks; the factor A*W cancels both exactly, leaving the gradient of
``sum(S) / N``.

A step whose loss is non-finite on any rank (agreed by the same all-reduce that sums the
loss) is skipped through the StepGate: DeepSpeed's bookkeeping runs, the weights and optimizer
moments do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from frontier.train.data import Batch
from frontier.train.distributed import DistInfo, all_reduce_sum
from frontier.train.engine import full_grad_norm, zero_stage
from frontier.train.stability import StepGate


@dataclass
class StepResult:
    loss: float  # mean token loss of the global batch (nan/inf when non-finite)
    targets: int  # non-masked tokens in the global batch
    grad_norm: float | None
    finite: bool  # loss and gradients finite: the update was applied


def run_step(engine: Any, batches: list[Batch], info: DistInfo, gate: StepGate) -> StepResult:
    """Forward/backward every micro-batch of this rank, then the optimizer update (all ranks together)."""
    (n_global,) = all_reduce_sum([float(sum(b.num_targets for b in batches))], info)
    scale = len(batches) * info.world_size / max(n_global, 1.0)
    local_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    grad_norm: float | None = None
    finite = True
    full_grads = zero_stage(engine) == 0 and not engine.bfloat16_enabled() and not engine.fp16_enabled()
    for i, batch in enumerate(batches):
        loss_sum = engine(**batch.model_inputs(info.device))  # fp32 scalar
        local_sum += loss_sum.detach().double()
        last = i == len(batches) - 1
        if last:
            total, bad = all_reduce_sum([local_sum.item(), float(not math.isfinite(local_sum.item()))], info)
            finite = bad == 0
        engine.backward(loss_sum * scale)
        if last:
            if full_grads:  # grads are whole and already averaged on every rank: one consistent check
                grad_norm = full_grad_norm(engine)
                finite = finite and math.isfinite(grad_norm)
            gate.skip = not finite
        try:
            engine.step()
        finally:
            gate.skip = False
    if not full_grads:
        norm = engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else None
        if not engine.fp16_enabled() and not engine.was_step_applied():
            finite = False  # DeepSpeed found inf/nan gradients and skipped the step itself
    return StepResult(loss=total / max(n_global, 1.0), targets=int(n_global), grad_norm=grad_norm, finite=finite)


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
