"""Parameter groups (weight decay on or off) and the client optimizer handed to DeepSpeed.

A parameter is exempt from weight decay when any ``optimizer.no_decay`` pattern (a regular
expression, searched case-insensitively) matches its qualified name, its owning module's class
name (lower case: ``llamarmsnorm``, ``layernorm``, ``embedding``, ...) or its role: ``bias`` (a
bias vector), ``norm`` (owned by a normalisation layer) or ``embedding`` (owned by an
nn.Embedding, including a head tied to it). Roles make the defaults ["norm", "bias",
"embedding"] work whatever the architecture names its modules (Llama's ``embed_tokens``, GPT-2's
``wte``/``ln_1``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import nn

from frontier.config.optimizer import OptimizerConfig
from frontier.errors import ConfigError

log = logging.getLogger("frontier.train")


def parameter_roles(model: nn.Module) -> dict[str, set[str]]:
    """Qualified name -> tags (roles and owning class names) of every trainable parameter, listed once."""
    roles: dict[str, set[str]] = {}
    seen: dict[int, str] = {}
    for module_name, module in model.named_modules():
        kind = type(module).__name__.lower()
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{pname}" if module_name else pname
            key = seen.setdefault(id(param), name)
            tags = roles.setdefault(key, set())
            tags.add(kind)
            if pname == "bias" or pname.endswith("_bias"):
                tags.add("bias")
            if "norm" in kind:
                tags.add("norm")
            if isinstance(module, nn.Embedding):
                tags.add("embedding")
    return roles


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """Two groups: decayed (weight_decay = cfg.weight_decay) and exempt (0); names kept for reporting."""
    try:
        patterns = [re.compile(p, re.IGNORECASE) for p in cfg.no_decay]
    except re.error as exc:
        raise ConfigError(f"optimizer.no_decay: {exc.pattern!r} is not a valid regular expression ({exc})") from None
    params = dict(model.named_parameters())
    decay, no_decay = [], []
    for name, tags in parameter_roles(model).items():
        exempt = any(p.search(name) or any(p.search(t) for t in tags) for p in patterns)
        (no_decay if exempt else decay).append(name)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay, "names": decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
    ]
    return [g for g in groups if g["params"]]


def build_client_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """frontier.optim.build.build_optimizer over the groups (names dropped: optimizers reject unknown keys)."""
    from frontier.optim.build import build_optimizer

    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg)]
    return build_optimizer(groups, cfg)
