"""The CUDA kernel compiles for sm_80 and sm_90a with a bare nvcc (no GPU, no CUDA torch needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from frontier.ext import CSRC, CUDA_GENCODES, NVCC_FLAGS

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles_for_sm80_and_sm90a(tmp_path: Path) -> None:
    gencodes = [arg for code in CUDA_GENCODES for arg in ("-gencode", code)]
    for source in sorted((CSRC / "cuda").glob("*.cu")):
        cmd = [
            NVCC,
            "-c",
            "-std=c++17",
            *NVCC_FLAGS,
            "--threads",
            "2",
            *gencodes,
            str(source),
            "-o",
            str(tmp_path / f"{source.stem}.o"),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
        assert (tmp_path / f"{source.stem}.o").stat().st_size > 0


def test_cuda_kernel_includes_no_torch_headers() -> None:
    """The CPU torch build ships no c10/cuda headers: the kernel must build without torch."""
    for source in (CSRC / "cuda").glob("*.cu"):
        text = source.read_text()
        assert "#include <torch" not in text and "#include <ATen" not in text and "#include <c10" not in text
