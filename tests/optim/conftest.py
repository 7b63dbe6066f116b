"""Optimizer tests run their ops on one thread: the numerics do not depend on threading (the kernels
index their stochastic rounding by element, not by thread), and OpenMP barriers on a shared
2-core CI machine cost more than the tiny tensors here. Threaded splitting has its own test
(test_fused_adamw_op.py::test_threaded_split_is_bit_identical)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
