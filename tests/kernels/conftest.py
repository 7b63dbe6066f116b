"""Kernel tests: under Triton's interpreter, refuse launch options a real GPU backend would refuse.

The interpreter ignores num_warps, so a launch with 5 warps passes every CPU test and fails on the first
CUDA call (found on an H200: RoPE with 32 query and 8 key heads). Checking the options here keeps that
class of bug on the CPU.
"""

from __future__ import annotations

import pytest

from frontier.kernels.dispatch import triton_available, triton_interpreting


@pytest.fixture(autouse=True)
def launch_options_a_gpu_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (triton_available() and triton_interpreting()):
        return  # on a GPU, Triton's own backend checks them
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        warps = kwargs.get("num_warps")
        if warps is not None:
            assert warps > 0 and warps & (warps - 1) == 0, f"{self.__name__}: num_warps={warps} is not a power of 2"
        stages = kwargs.get("num_stages")
        if stages is not None:
            assert stages >= 1, f"{self.__name__}: num_stages={stages}"
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
