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


# Test files that run the whole pipeline (minutes each): collected first, so that with several workers they start
# at once instead of leaving one worker to finish them alone after everything else is done.
PIPELINE_TESTS = "tests/workflow/"


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The suite runs on every core through pytest-xdist (``-n auto``, each test file on one worker: its module
    fixtures are built once), unless the command line sets the workers (``-n 0``: one process; ``-p no:xdist``),
    runs benchmarks (they time one thing at a time) or only collects. Runs before xdist's own hook, which turns
    "auto" into the core count."""
    option = config.option
    if hasattr(config, "workerinput"):  # a worker itself: it runs tests, it must not start workers of its own
        return
    if getattr(option, "numprocesses", False) is not None:  # set on the command line, or xdist not loaded
        return
    if getattr(option, "benchmark_only", False) or option.collectonly or option.usepdb:
        return
    option.numprocesses = "auto"
    if option.dist == "no":
        option.dist = "loadfile"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    # stable: the pipeline files first, everything else in its collected order
    items.sort(key=lambda item: not item.nodeid.startswith(PIPELINE_TESTS))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
