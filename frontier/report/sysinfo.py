"""System information for the report: the machine and the library versions it was built with.

Prefers the project-wide collector (frontier.utils.envinfo, also behind `frontier env`) and
falls back to a small local one while that module is absent.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

_PACKAGES = ("torch", "transformers", "tokenizers", "deepspeed", "peft", "triton", "numpy")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _basic() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    info.update({name: _version(name) for name in _PACKAGES})
    try:
        import torch

        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else "not available"
        if torch.cuda.is_available():
            info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    return info


def system_info() -> dict[str, Any]:
    """A flat mapping of names to printable values."""
    try:
        from frontier.utils.envinfo import collect_env  # type: ignore[import-not-found]
    except ImportError:
        return _basic()
    env = collect_env()
    if isinstance(env, dict):
        return {str(k): v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in env.items()}
    return _basic()
