"""Load the C++/CUDA extension `frontier._C` (the `torch.ops.frontier.*` ops).

The extension is normally built at install time (`pip install --no-build-isolation -e .`, see
setup.py). When it is missing (a plain checkout, a changed torch), `load_extension()` builds the
same sources just in time with `torch.utils.cpp_extension.load` and ninja into a cache directory
keyed by the torch build and the sources, so later processes reuse it. MAX_JOBS bounds the
parallel compile jobs in both paths (ninja reads it). Without a compiler the error says so on one
line instead of a compiler traceback.

The build recipe (sources and flags) lives here and setup.py imports it, so the install-time and
the just-in-time builds cannot drift apart.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import shutil
from pathlib import Path

from frontier.errors import FrontierError

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# -ffp-contract=off: no FMA contraction, so the baseline and AVX2 loops (and the CUDA kernel, built
# with --fmad=false) give bit-identical results; -fno-math-errno / -fno-trapping-math let GCC
# vectorize sqrt and if-convert. No -march=native: one build must run on any x86-64 or arm64 CPU
# (wider SIMD is chosen at run time, see csrc/fused_adamw_cpu_kernels.cpp).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
NVCC_FLAGS = ["-O3", "--fmad=false"]
LINK_FLAGS = ["-fopenmp"]
# The CUDA architectures CI compiles the kernel for (tests/csrc/test_cuda_compiles.py).
CUDA_GENCODES = ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a"]


class ExtensionError(FrontierError):
    """The C++ extension is not installed and cannot be built here."""


def extension_sources(root: Path = ROOT, with_cuda: bool = False) -> list[str]:
    """Source files of frontier._C, relative to `root`: csrc/*.cpp, plus csrc/cuda/* with CUDA."""
    csrc = root / "csrc"
    files = sorted(csrc.glob("*.cpp"))
    if with_cuda:
        files += sorted((csrc / "cuda").glob("*.cu")) + sorted((csrc / "cuda").glob("*.cpp"))
    return [str(p.relative_to(root)) for p in files]


def cuda_buildable() -> bool:
    """Whether CUDA sources can be built: a CUDA build of torch, nvcc, and FRONTIER_NO_CUDA unset."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("FRONTIER_NO_CUDA") != "1"


def find_cxx() -> str | None:
    """The C++ compiler a build would use (CXX, else c++ / g++ / clang++), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir(sources: list[Path]) -> Path:
    """A build directory per torch build and source contents: a stale build is never reused."""
    import torch

    digest = hashlib.sha256()
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{CXX_FLAGS}|{NVCC_FLAGS}".encode())
    for path in sorted(sources) + sorted(CSRC.rglob("*.h")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    base = Path(os.environ.get("FRONTIER_EXT_CACHE", Path.home() / ".cache" / "frontier" / "ext"))
    return base / digest.hexdigest()[:16]


def _jit_build() -> str:
    """Compile csrc/ into a cache directory and load it; returns the directory."""
    if not CSRC.is_dir():
        raise ExtensionError(
            f"frontier._C is not installed and its sources are missing ({CSRC}); "
            "reinstall with `pip install --no-build-isolation -e .` or set optim.impl: torch"
        )
    if find_cxx() is None:
        raise ExtensionError(
            "frontier._C is not installed and no C++ compiler was found to build it "
            "(install g++ or set CXX), or set optim.impl: torch to use torch.optim.AdamW"
        )
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise ExtensionError("frontier._C is not installed and ninja is missing to build it: pip install ninja")
    with_cuda = cuda_buildable()
    sources = [ROOT / s for s in extension_sources(ROOT, with_cuda)]
    build_dir = _cache_dir(sources)
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name="frontier_C",
            sources=[str(s) for s in sources],
            extra_cflags=CXX_FLAGS,
            extra_cuda_cflags=NVCC_FLAGS,
            extra_ldflags=LINK_FLAGS,
            extra_include_paths=[str(CSRC)],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ExtensionError(f"building frontier._C in {build_dir} failed: {last}") from exc
    return str(build_dir)


@functools.cache
def _load(build: bool) -> str:
    try:
        importlib.import_module("frontier._C")
        return "installed"
    except ImportError as exc:
        if not build:
            raise ExtensionError(f"frontier._C is not installed ({exc})") from exc
    return f"jit:{_jit_build()}"


def load_extension(build: bool = True) -> str:
    """Make the `torch.ops.frontier` ops available; returns "installed" or "jit:<build dir>".

    With build=False only an installed extension is loaded. Raises ExtensionError (one line) when
    the extension cannot be loaded or built.
    """
    try:
        return _load(build)
    except ExtensionError:
        raise
    except OSError as exc:  # an installed .so built against another torch
        raise ExtensionError(f"frontier._C failed to load: {exc}") from exc


def extension_available(build: bool = False) -> bool:
    """Whether the ops load (building them first when `build`); never raises."""
    try:
        load_extension(build)
    except ExtensionError:
        return False
    return True
