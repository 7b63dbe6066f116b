"""Build the `frontier._C` extension from csrc/ with torch's cpp_extension.

C++ sources (csrc/*.cpp: schemas + CPU kernels) are always built; CUDA sources (csrc/cuda/*)
only when torch was built with CUDA and nvcc is found (FRONTIER_NO_CUDA=1 skips them). Sources
and flags come from frontier/ext.py, which builds the same extension just in time when it is not
installed. Build without isolation so the installed torch is used:
``pip install --no-build-isolation -e .`` (see run.sh). MAX_JOBS bounds ninja's parallel jobs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup


def _extensions() -> tuple[list, dict]:
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        sys.stderr.write(
            "frontier: torch must be installed before building the extension "
            "(pip install torch, then pip install --no-build-isolation -e .)\n"
        )
        raise
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)  # the build recipe is shared with the just-in-time build
    from frontier.ext import CXX_FLAGS, LINK_FLAGS, NVCC_FLAGS, cuda_buildable, extension_sources, find_cxx

    if find_cxx() is None:
        raise SystemExit("frontier: no C++ compiler found (install g++ or set CXX) to build frontier._C")
    with_cuda = cuda_buildable()
    sources = extension_sources(Path(here), with_cuda)
    extra = {"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)}
    include_dirs = [os.path.join(here, "csrc")]
    if with_cuda:
        ext = CUDAExtension(
            "frontier._C", sources, include_dirs=include_dirs, extra_compile_args=extra, extra_link_args=LINK_FLAGS
        )
    else:
        ext = CppExtension(
            "frontier._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra["cxx"],
            extra_link_args=LINK_FLAGS,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
