"""Build the optimizer a config asks for: FusedAdamW, torch.optim.AdamW or DeepSpeed's Adam.

Param groups (which params decay) are made by frontier.train.engine.optimizer.param_groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from frontier.config.optimizer import OptimizerConfig
from frontier.errors import ConfigError
from frontier.ext import ExtensionError
from frontier.optim import ops
from frontier.optim.fused_adamw import FusedAdamW

log = logging.getLogger(__name__)


def resolve_impl(cfg: OptimizerConfig) -> str:
    """The implementation `auto` stands for here: frontier when the extension loads, else torch."""
    if cfg.impl != "auto":
        return cfg.impl
    try:
        ops.load_ops()
        return "frontier"
    except ExtensionError as exc:
        if cfg.state_dtype == "bf16":
            raise ConfigError(
                f"optimizer.state_dtype: bf16 states need the frontier extension, which is unusable: {exc}"
            ) from exc
        log.info("optimizer.impl auto: %s; using torch.optim.AdamW", exc)
        return "torch"


def build_optimizer(groups: Iterable[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """An AdamW over `groups` (params or param-group dicts) in the implementation cfg.impl selects."""
    groups = list(groups)
    impl = resolve_impl(cfg)
    betas = (cfg.beta1, cfg.beta2)
    if impl == "frontier":
        return FusedAdamW(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            state_dtype=cfg.state_dtype,
            check_finite=cfg.check_finite,
            seed=cfg.seed,
        )
    if cfg.state_dtype != "fp32":
        raise ConfigError(f"optimizer.state_dtype: {cfg.state_dtype} states need impl frontier, not {impl}")
    if impl == "torch":
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in _params(groups))
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused
        )
    return _deepspeed_adam(groups, cfg)


def _params(groups: list[Any]) -> list[torch.Tensor]:
    if groups and isinstance(groups[0], dict):
        return [p for g in groups for p in g["params"]]
    return groups


def _deepspeed_adam(groups: list[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """DeepSpeed's own Adam in AdamW mode: DeepSpeedCPUAdam for CPU params, FusedAdam for CUDA."""
    devices = {p.device.type for p in _params(groups)}
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    try:
        if devices == {"cpu"}:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
        if devices == {"cuda"}:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(groups, adam_w_mode=True, **kwargs)
        raise RuntimeError(f"params on {sorted(devices)}; DeepSpeed's Adam needs all of them on cpu or all on cuda")
    except Exception as exc:  # DeepSpeed raises many types when its ops cannot be built or loaded
        lines = str(exc).strip().splitlines()
        reason = lines[-1] if lines else type(exc).__name__
        raise ConfigError(
            f"optimizer.impl: deepspeed is not usable here ({type(exc).__name__}: {reason}); use frontier or torch"
        ) from exc
