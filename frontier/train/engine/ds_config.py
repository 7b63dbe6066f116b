"""The DeepSpeed config: generated from params, optionally overridden by a user JSON.

It is made from the engine: section (shared by train and finetune) and the run's resolved batch (the
stage's micro-batch and accumulation, after micro_batch_size: auto chose). params is the source of
truth for everything it has a key for; ``engine.deepspeed_config`` may add or change anything else
(bucket sizes, communication dtype, offload details, ...). A JSON value that contradicts params is a
ConfigError naming both keys, never a silent winner. A JSON value of ``"auto"`` (the Hugging Face
convention) takes the generated value.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from frontier.config.engine import EngineConfig
from frontier.errors import ConfigError

# Blocks owned by params: the client optimizer is built from `optimizer.*` and the learning rate
# is set every step from `schedule.*`, so a DeepSpeed optimizer/scheduler would fight them.
_OWNED_BLOCKS = {"optimizer": "optimizer.*", "scheduler": "schedule.*"}


def _offload(enabled: bool) -> dict[str, Any]:
    return {"device": "cpu", "pin_memory": True} if enabled else {"device": "none"}


def generate(engine: EngineConfig, world_size: int, *, micro_batch_size: int, grad_accum_steps: int) -> dict[str, Any]:
    """The DeepSpeed config implied by params alone (`micro_batch_size`, `grad_accum_steps`: the run's, resolved)."""
    fp16 = engine.precision == "fp16"
    return {
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": engine.grad_clip,
        "zero_optimization": {
            "stage": engine.zero_stage,
            "offload_optimizer": _offload(engine.offload_optimizer),
            "offload_param": _offload(engine.offload_params),
        },
        "bf16": {"enabled": engine.precision == "bf16"},
        # dynamic loss scaling: loss_scale 0 starts at 2**initial_scale_power and adapts
        "fp16": {
            "enabled": fp16,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_allow_untested_optimizer": True,  # the client optimizer is frontier's or torch's AdamW
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # frontier logs; DeepSpeed's own step lines would duplicate them
        "wall_clock_breakdown": False,
    }


def _params_view(
    engine: EngineConfig, world_size: int, micro: int, accum: int, section: str
) -> dict[str, tuple[str, Any, Any]]:
    """DeepSpeed key -> (params key, params value, predicate(json value) -> agrees); `section`: the stage's
    section holding the batch keys (train or finetune)."""
    batch = micro * accum * world_size

    def offload_agrees(flag: bool) -> Any:
        return lambda v: (str(v).lower() not in ("none", "")) == flag

    return {
        "train_batch_size": (
            f"{section}.micro_batch_size x {section}.grad_accum_steps x world size ({world_size})",
            batch,
            lambda v: v == batch,
        ),
        "train_micro_batch_size_per_gpu": (f"{section}.micro_batch_size", micro, lambda v: v == micro),
        "gradient_accumulation_steps": (f"{section}.grad_accum_steps", accum, lambda v: v == accum),
        "gradient_clipping": ("engine.grad_clip", engine.grad_clip, lambda v: float(v) == engine.grad_clip),
        "zero_optimization.stage": ("engine.zero_stage", engine.zero_stage, lambda v: v == engine.zero_stage),
        "zero_optimization.offload_optimizer.device": (
            "engine.offload_optimizer",
            engine.offload_optimizer,
            offload_agrees(engine.offload_optimizer),
        ),
        "zero_optimization.offload_param.device": (
            "engine.offload_params",
            engine.offload_params,
            offload_agrees(engine.offload_params),
        ),
        "bf16.enabled": ("engine.precision", engine.precision, lambda v: bool(v) == (engine.precision == "bf16")),
        "fp16.enabled": ("engine.precision", engine.precision, lambda v: bool(v) == (engine.precision == "fp16")),
    }


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def read_user_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"engine.deepspeed_config: {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"engine.deepspeed_config: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"engine.deepspeed_config: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def merge(generated: dict[str, Any], user: dict[str, Any], view: dict[str, tuple[str, Any, Any]], source: str) -> dict:
    """`generated` overridden by `user`; ConfigError for any user value that contradicts params (`view`,
    _params_view's)."""
    for block, owner in _OWNED_BLOCKS.items():
        if block in user:
            raise ConfigError(
                f"{source}: '{block}' is set by params ({owner}) in Frontier; remove it from the DeepSpeed JSON"
            )
    merged = copy.deepcopy(generated)
    for key, value in _flatten(user).items():
        if value == "auto":
            continue  # keep the generated value
        if key in view:
            params_key, params_value, agrees = view[key]
            try:
                ok = agrees(value)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(
                    f"{source}: '{key}' = {json.dumps(value)} contradicts {params_key} = {params_value!r} in params; "
                    f"set it in one place (remove '{key}' from the JSON or change {params_key})"
                )
        _set(merged, key, value)
    return merged


def build_ds_config(
    engine: EngineConfig, world_size: int, *, micro_batch_size: int, grad_accum_steps: int, section: str = "train"
) -> dict[str, Any]:
    """The config passed to deepspeed.initialize: the engine section with the run's resolved batch
    (`section`: the stage whose batch keys they are, for the messages)."""
    generated = generate(engine, world_size, micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps)
    if not engine.deepspeed_config:
        return generated
    user = read_user_config(engine.deepspeed_config)
    view = _params_view(engine, world_size, micro_batch_size, grad_accum_steps, section)
    return merge(generated, user, view, f"engine.deepspeed_config ({engine.deepspeed_config})")


# What deepspeed.zero.Init reads when it partitions a model as it is constructed: the ZeRO settings (stage 3,
# offload_param, persistence thresholds, ...) and the precision (the partitions' dtype).
_CONSTRUCTION_BLOCKS = ("zero_optimization", "bf16", "fp16")


def construction_config(engine: EngineConfig, world_size: int) -> dict[str, Any] | None:
    """The DeepSpeed config a ZeRO-3 model is constructed under (partitioned as it is built, before the run's
    batch is resolved); None below stage 3. The engine section and the user JSON's ZeRO and precision blocks,
    as build_ds_config makes them; the batch keys are a placeholder batch of 1 per rank (DeepSpeed's config
    parser wants one; zero.Init reads none) and the engine's own config is still build_ds_config's."""
    if engine.zero_stage != 3:
        return None
    generated = generate(engine, world_size, micro_batch_size=1, grad_accum_steps=1)
    if not engine.deepspeed_config:
        return generated
    user = {k: v for k, v in read_user_config(engine.deepspeed_config).items() if k in _CONSTRUCTION_BLOCKS}
    view = _params_view(engine, world_size, 1, 1, "train")  # only the ZeRO and precision keys can be compared
    return merge(generated, user, view, f"engine.deepspeed_config ({engine.deepspeed_config})")
