"""Loading the extension: the installed ops, the build recipe, and one clear error without a compiler."""

from __future__ import annotations

import pytest
import torch

from frontier import ext
from frontier.optim import ops


def test_installed_extension_registers_cpu_ops() -> None:
    assert ext.load_extension(build=False) == "installed"  # pip install -e . built it
    assert ops.has_kernel("cpu")
    assert hasattr(torch.ops.frontier, "fused_adamw_") and hasattr(torch.ops.frontier, "nonfinite_check_")


def test_sources_cover_csrc_and_cuda_only_when_asked() -> None:
    cpu = ext.extension_sources()
    assert "csrc/ops.cpp" in cpu and all(s.startswith("csrc/") and s.endswith(".cpp") for s in cpu)
    with_cuda = ext.extension_sources(with_cuda=True)
    assert "csrc/cuda/fused_adamw_kernel.cu" in with_cuda and "csrc/cuda/fused_adamw_cuda.cpp" in with_cuda


def test_portable_flags() -> None:
    assert not any("march" in flag or "mavx" in flag for flag in ext.CXX_FLAGS)  # runtime dispatch instead
    assert "-ffp-contract=off" in ext.CXX_FLAGS and "--fmad=false" in ext.NVCC_FLAGS


def test_missing_compiler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ext, "find_cxx", lambda: None)
    with pytest.raises(ext.ExtensionError, match="no C\\+\\+ compiler was found"):
        ext._jit_build()


def test_not_installed_without_build_is_an_extension_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(ext.importlib, "import_module", missing)
    ext._load.cache_clear()
    try:
        with pytest.raises(ext.ExtensionError, match="not installed"):
            ext.load_extension(build=False)
        assert not ext.extension_available(build=False)
    finally:
        ext._load.cache_clear()
