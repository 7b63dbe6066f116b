"""Test-session setup: run Triton in its interpreter and DeepSpeed on the CPU when there is no GPU.

Both switches must be set before the libraries are imported, so they live here rather than in the
package (which never sets environment variables at import time).
"""

from __future__ import annotations

import os
import shutil

import pytest

_HAS_CUDA = shutil.which("nvidia-smi") is not None and os.environ.get("FRONTIER_TEST_CPU") != "1"
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
