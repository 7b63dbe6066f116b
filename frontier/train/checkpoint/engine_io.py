"""DeepSpeed's checkpoint files, loaded without unrestricted pickle; the engine's state checked before a save.

Why DeepSpeed's own checkpoint files: they cover every ZeRO stage, offload and the loss scaler
(partitioned optimizer state included), which re-implementing would duplicate. What makes them
safe to load: (1) frontier.train.checkpoint.checkpoint verifies every file against the sha256 manifest
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
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

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
    """engine.load_checkpoint reads a universal checkpoint inside the block (frontier.train.checkpoint.reshard).

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
