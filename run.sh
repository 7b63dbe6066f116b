#!/usr/bin/env bash
# Install Frontier into ./.venv (once; again when its install inputs change), then run a command in it.
#   bash run.sh snakemake --cores all     # the default pipeline, end to end
#   bash run.sh pytest                    # the test suite
# Environment: PYTHON (interpreter for the venv, default python3), TORCH_SPEC (default torch==2.13.0,
# a CPU build; on a GPU machine use e.g. TORCH_SPEC="torch" for the CUDA build), MAX_JOBS (extension build).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FRONTIER_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

stamp_inputs() { cat pyproject.toml setup.py run.sh csrc/*.cpp csrc/*.h csrc/cuda/* 2>/dev/null | sha256sum | cut -c1-16; }

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "run.sh: Python 3.10+ required ($PY is $("$PY" -V 2>&1))" >&2; exit 2; }
    "$PY" -m venv "$VENV"
fi
want=$(stamp_inputs)
if [ "$(cat "$VENV/.frontier-installed" 2>/dev/null)" != "$want" ]; then
    echo "run.sh: installing Frontier into $VENV" >&2
    pip_q() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
    # torch first, explicitly: a bare `torch` requirement with none installed pulls a multi-GB CUDA build.
    "$VENV/bin/python" -c 'import torch' 2>/dev/null || pip_q "$TORCH_SPEC"
    pip_q setuptools wheel ninja pybind11
    # DeepSpeed ships an sdist whose setup imports torch: build it against the installed torch.
    "$VENV/bin/python" -c 'import deepspeed' 2>/dev/null || DS_BUILD_OPS=0 pip_q --no-build-isolation deepspeed
    pip_q --no-build-isolation -e ".[dev]"
    echo "$want" > "$VENV/.frontier-installed"
fi
export PATH="$PWD/$VENV/bin:$PATH" VIRTUAL_ENV="$PWD/$VENV"
[ $# -gt 0 ] || exit 0
exec "$@"
