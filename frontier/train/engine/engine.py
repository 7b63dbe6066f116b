"""The DeepSpeed engine around the model (its checkpoint files load weights-only: checkpoint.engine_io)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch

from frontier.model.loss import CausalLMWithLoss
from frontier.train.checkpoint.engine_io import WeightsOnlyCheckpointEngine


@dataclass
class WholeGrads:
    """What the trainer takes over from DeepSpeed when every rank holds whole fp32 gradients.

    At ZeRO-0 without fp16/bf16 DeepSpeed's optimizer is the client optimizer itself, so the
    gradient norm, clipping and zeroing can be done by frontier once, over a parameter list taken
    once, without a host sync (frontier.train.engine.step). DeepSpeed would otherwise compute the norm a
    second time to clip (one kernel per tensor, a 1-rank all-reduce, a ``mul_`` of every grad)
    and walk ``named_parameters()`` of every module to zero the grads.
    """

    params: list[torch.nn.Parameter]  # trainable parameters, each once
    clip: float  # engine.grad_clip (0: no clipping)

    def zero_grad(self) -> None:
        """DeepSpeed's engine.zero_grad over the stored list (same effect: every grad set to None)."""
        for p in self.params:
            p.grad = None


def _whole_fp32_grads(ds_config: dict[str, Any]) -> bool:
    return (
        ds_config["zero_optimization"]["stage"] == 0
        and not ds_config.get("bf16", {}).get("enabled", False)
        and not ds_config.get("fp16", {}).get("enabled", False)
    )


def make_engine(module: CausalLMWithLoss, optimizer: torch.optim.Optimizer, ds_config: dict[str, Any]) -> Any:
    """deepspeed.initialize with a client optimizer; the engine loads checkpoints weights-only.

    DeepSpeed's throughput timer (a device synchronize at every forward and step) is turned off.

    With whole fp32 gradients (ZeRO-0, no fp16/bf16) the engine gets a ``WholeGrads``
    (``whole_grads(engine)``): DeepSpeed's clipping is switched off (gradient_clipping 0, the
    trainer clips with the same rule, clip coefficient ``min(1, clip / (norm + 1e-6))``), its
    ``zero_grad`` runs over a stored parameter list, and with one data-parallel rank its backward
    all-reduce is skipped: on one rank it only flattens every grad into a bucket, all-reduces it
    with itself and copies it back (engine.allreduce_gradients -> buffered_allreduce_fallback, an
    identity). Gradient accumulation does not depend on it: grads accumulate in ``.grad`` across
    micro-batches and the 1/A loss scaling is done in engine.backward.
    """
    whole = _whole_fp32_grads(ds_config)
    clip = float(ds_config.get("gradient_clipping", 0.0) or 0.0)
    if whole:
        ds_config = {**ds_config, "gradient_clipping": 0.0}
    if "timers" not in ds_config:
        # DeepSpeed's throughput timer is on by default and synchronizes the device at every forward and
        # step to time them; it reports only every steps_per_print steps, which frontier turns off (frontier
        # times steps itself). A config that names its timers keeps them.
        ds_config = {**ds_config, "timers": {"throughput": {"enabled": False}}}
    if ds_config["zero_optimization"]["stage"] == 3 and module.fused:
        # the fused loss reads the head weight outside the head's forward: ZeRO-3 must gather it there
        deepspeed.zero.register_external_parameter(module, module.head_weight())
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config, dist_init_required=False)
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
    if whole:
        params = list({id(p): p for p in module.parameters() if p.requires_grad}.values())
        grads = WholeGrads(params=params, clip=clip)
        engine.frontier_whole_grads = grads
        engine.zero_grad = grads.zero_grad
        if engine.dp_world_size == 1:
            engine.enable_backward_allreduce = False
    return engine


def zero_stage(engine: Any) -> int:
    return int(engine.zero_optimization_stage())


def whole_grads(engine: Any) -> WholeGrads | None:
    """The engine's WholeGrads (see make_engine), or None when DeepSpeed owns norm and clipping."""
    return getattr(engine, "frontier_whole_grads", None)


def clip_whole_grads(grads: WholeGrads) -> torch.Tensor:
    """L2 norm of the (already averaged) gradients, as a 0-dim device tensor; clips them when grads.clip > 0.

    No host sync: a non-finite norm makes the clip coefficient NaN, which poisons only grads of a step the
    trainer skips anyway (frontier.train.engine.step).
    """
    with_grads = [p for p in grads.params if p.grad is not None]
    if not with_grads:
        return torch.zeros((), device=grads.params[0].device if grads.params else "cpu")
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grads])
    if grads.clip > 0:
        torch.nn.utils.clip_grads_with_norm_(with_grads, grads.clip, norm)  # takes the params, scales their grads
    return norm


def loss_scale(engine: Any) -> float | None:
    """The current fp16 loss scale (None without fp16)."""
    if not engine.fp16_enabled():
        return None
    scale = getattr(engine.optimizer, "loss_scale", None) or getattr(engine.optimizer, "cur_scale", None)
    return float(scale) if scale is not None else None


@contextlib.contextmanager
def gathered_params(engine: Any) -> Iterator[None]:
    """Full parameters on every rank inside the block (a no-op below ZeRO-3)."""
    if zero_stage(engine) == 3:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield
    else:
        yield
