"""Build the `frontier._C` extension from csrc/ with torch's cpp_extension.

C++ sources (csrc/*.cpp: schemas + CPU kernels) are always built; CUDA sources (csrc/cuda/*.cu)
only when torch was built with CUDA and nvcc is found. Build without isolation so the installed
torch is used: ``pip install --no-build-isolation -e .`` (see run.sh). MAX_JOBS is respected by
torch's ninja build.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup


def _extensions() -> tuple[list, dict]:
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        sys.stderr.write(
            "frontier: torch must be installed before building the extension "
            "(pip install torch, then pip install --no-build-isolation -e .)\n"
        )
        raise
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise SystemExit("frontier: no C++ compiler found (install g++ or set CXX) to build frontier._C")
    here = os.path.dirname(os.path.abspath(__file__))
    cpp = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.cpp")))
    cu = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "cuda", "*.cu")))
    cu += sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "cuda", "*.cpp")))
    with_cuda = bool(cu) and torch.version.cuda is not None and CUDA_HOME is not None
    if os.environ.get("FRONTIER_NO_CUDA") == "1":
        with_cuda = False
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    extra = {"cxx": cxx_flags}
    define_macros = []
    if with_cuda:
        extra["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math"]
        define_macros.append(("FRONTIER_WITH_CUDA", None))
        ext = CUDAExtension(
            "frontier._C", cpp + cu, extra_compile_args=extra, extra_link_args=["-fopenmp"],
            define_macros=define_macros,
        )
    else:
        ext = CppExtension("frontier._C", cpp, extra_compile_args=extra, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
