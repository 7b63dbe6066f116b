"""The interpreter's workarounds (frontier.kernels.interpreter): on under TRITON_INTERPRET=1, all off on a GPU
build (checked in a process without it), and the hand-rounded bf16 cast equal to the GPU's (torch's) cast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frontier.kernels import interpreter
from frontier.kernels.attention_triton import attn_fwd_kernel
from frontier.kernels.dispatch import triton_available
from frontier.kernels.triton_utils import jit, tl, to_dtype, triton

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton")


def test_interpreted_is_what_triton_made_of_the_kernels() -> None:
    assert interpreter.INTERPRETED == (type(attn_fwd_kernel).__name__ == "InterpretedFunction")
    assert interpreter.ROUND_BF16_BY_HAND == interpreter.INTERPRETED


@pytest.mark.skipif(not interpreter.INTERPRETED, reason="the interpreter's flags")
def test_only_bf16_dots_are_widened_in_the_interpreter() -> None:
    assert interpreter.dot_in_fp32(torch.bfloat16)
    assert not interpreter.dot_in_fp32(torch.float16) and not interpreter.dot_in_fp32(torch.float32)


@jit
def _cast_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Y + offs, to_dtype(tl.load(X + offs, mask=mask, other=0.0), Y.dtype.element_ty), mask=mask)


@pytest.mark.skipif(not interpreter.INTERPRETED, reason="runs the kernel in the interpreter")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_to_dtype_rounds_as_the_gpu_cast_does(dtype: torch.dtype) -> None:
    # torch's cast rounds to nearest even, like a GPU's; the interpreter's own bf16 cast truncates.
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (2048,), generator=gen, dtype=torch.int64).to(torch.int32)
    ties = (bits & ~0xFFFF) | 0x8000  # exactly half a bf16 ulp: ties go to the even neighbour
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.4e38, -3.4e38, 1e-40, 65519.0])
    x = torch.cat([bits.view(torch.float32), ties.view(torch.float32), torch.randn(1000, generator=gen), specials])
    y = torch.empty(x.shape, dtype=dtype)
    _cast_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    want = x.to(dtype)
    same = (y.view(torch.int16) == want.view(torch.int16)) | (y.isnan() & want.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {x.numel()} values cast differently"


# Run without the interpreter: every workaround is off and the launchers pick their GPU sizes.
_GPU_BUILD = """
import torch
from frontier.kernels import interpreter
from frontier.kernels.attention import _config, _dot_args
from frontier.kernels.cross_entropy import _block_v
assert not interpreter.INTERPRETED and not interpreter.ROUND_BF16_BY_HAND
assert _dot_args(torch.bfloat16) == {"PREC": None, "F32": False}
assert _config("fwd", 64, torch.bfloat16) == dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
assert _block_v(50257, torch.device("cpu"), None) == (32768, 32)
print("ok")
"""


def test_without_the_interpreter_every_workaround_is_off() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _GPU_BUILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr[-3000:]
