"""The DeepSpeed engine around the model, and loading its checkpoint files without unrestricted pickle.

Why DeepSpeed's own checkpoint files: they cover every ZeRO stage, offload and the loss scaler
(partitioned optimizer state included), which re-implementing would duplicate. What makes them
safe to load: (1) frontier.train.checkpoint verifies every file against the sha256 manifest
written with it before anything is read, and (2) every ``torch.load`` during the load runs with
``weights_only=True`` (a checkpoint engine that asks for it, plus TORCH_FORCE_WEIGHTS_ONLY_LOAD
for any other DeepSpeed code path), allowing only the few plain-data DeepSpeed classes those
files hold (SAFE_GLOBAL_NAMES). Pickled code can therefore never run from a checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from frontier.model.loss import CausalLMWithLoss

# plain-data classes pickled into DeepSpeed checkpoints (enum, loss-scaler state, fragment address)
SAFE_GLOBAL_NAMES = (
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.runtime.fp16.loss_scaler:DynamicLossScaler",
    "deepspeed.utils.tensor_fragment:fragment_address",
)


def _safe_globals() -> list[Any]:
    out = []
    for dotted in SAFE_GLOBAL_NAMES:
        module, _, name = dotted.partition(":")
        with contextlib.suppress(ImportError, AttributeError):
            out.append(getattr(importlib.import_module(module), name))
    return out


_weights_only_depth = 0  # nesting of weights_only_loads in this process


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load inside runs with weights_only=True and only SAFE_GLOBAL_NAMES allowed.

    Re-entrant: only the outermost block sets and restores anything. (torch's safe_globals removes its
    globals when a block exits, so a nested block, such as the checkpoint engine's load inside a
    DeepSpeed load, would otherwise take them away from the rest of the outer one.)
    """
    global _weights_only_depth
    if _weights_only_depth:
        _weights_only_depth += 1
        try:
            yield
        finally:
            _weights_only_depth -= 1
        return
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    _weights_only_depth = 1
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    finally:
        _weights_only_depth = 0
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


@contextlib.contextmanager
def universal_loads(engine: Any) -> Iterator[None]:
    """engine.load_checkpoint reads a universal checkpoint inside the block (frontier.train.reshard).

    DeepSpeed reads its ``checkpoint.load_universal`` setting only when loading, so it is switched on
    for this one load instead of in the config: the engine's own checkpoints stay ordinary ones.
    """
    before = engine._config.load_universal_checkpoint
    engine._config.load_universal_checkpoint = True
    try:
        yield
    finally:
        engine._config.load_universal_checkpoint = before


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with weights_only loads (DeepSpeed's passes weights_only=False)."""

    def load(self, path: str, map_location: Any = None) -> Any:
        with weights_only_loads():
            return torch.load(path, map_location=map_location, weights_only=True)


@dataclass
class WholeGrads:
    """What the trainer takes over from DeepSpeed when every rank holds whole fp32 gradients.

    At ZeRO-0 without fp16/bf16 DeepSpeed's optimizer is the client optimizer itself, so the
    gradient norm, clipping and zeroing can be done by frontier once, over a parameter list taken
    once, without a host sync (frontier.train.step). DeepSpeed would otherwise compute the norm a
    second time to clip (one kernel per tensor, a 1-rank all-reduce, a ``mul_`` of every grad)
    and walk ``named_parameters()`` of every module to zero the grads.
    """

    params: list[torch.nn.Parameter]  # trainable parameters, each once
    clip: float  # train.grad_clip (0: no clipping)

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
    trainer skips anyway (frontier.train.step).
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


def optimizer_chain(engine: Any) -> Iterator[Any]:
    """The engine's optimizer and each one it wraps (DeepSpeed's wrapper chain down to the torch optimizer)."""
    opt, seen = getattr(engine, "optimizer", None), set()
    while opt is not None and id(opt) not in seen:
        seen.add(id(opt))
        yield opt
        opt = getattr(opt, "optimizer", None)


def local_state_finite(engine: Any) -> bool:
    """True when this rank's weights and optimizer state hold no NaN/inf (under ZeRO: its partitions).

    Walks the model's parameters (ZeRO-3: the local ``ds_tensor`` shard), the ``state`` of every
    optimizer in DeepSpeed's wrapper chain, and ZeRO's fp32 master partitions.
    """
    tensors: list[torch.Tensor] = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
    for opt in optimizer_chain(engine):
        state = getattr(opt, "state", None)
        if isinstance(state, dict):
            for entry in state.values():
                if isinstance(entry, dict):
                    tensors += [v for v in entry.values() if torch.is_tensor(v)]
        for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            groups = getattr(opt, name, None)
            if isinstance(groups, (list, tuple)):
                tensors += [t for t in groups if torch.is_tensor(t)]
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(f).all()) for f in flags.values())  # one sync per device, not per tensor
