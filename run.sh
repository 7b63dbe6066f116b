#!/usr/bin/env bash
# Install Frontier into ./.venv from the hash-checked lock (once; again when the lock or the build inputs
# change), then run a command in it.
#   bash run.sh snakemake --cores all     # the default pipeline, end to end
#   bash run.sh pytest                    # the test suite
# Environment: FRONTIER_LOCK=cpu|cuda (default cpu: requirements/cpu.txt; cuda: torch's CUDA 13 build),
# FRONTIER_VENV (default .venv), PYTHON (interpreter for the venv, default python3), MAX_JOBS (extension build).
# Refresh the locks with `bash requirements/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FRONTIER_VENV:-.venv}
PY=${PYTHON:-python3}
FLAVOUR=${FRONTIER_LOCK:-cpu}
LOCK=requirements/$FLAVOUR.txt
BUILD_LOCK=requirements/$FLAVOUR-build.txt

[ -f "$LOCK" ] && [ -f "$BUILD_LOCK" ] || { echo "run.sh: FRONTIER_LOCK=$FLAVOUR: no $LOCK (expected cpu or cuda)" >&2; exit 2; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || { echo "run.sh: Python 3.10+ required ($PY is $("$PY" -V 2>&1))" >&2; exit 2; }
# The locks are resolved for CPython 3.11 on Linux x86-64; elsewhere install unlocked, and say so.
locked=1
"$PY" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.system() == "Linux"
    and platform.machine() == "x86_64" and platform.python_implementation() == "CPython"))' || locked=0

lock_id="$FLAVOUR locked=$locked $(cat "$LOCK" "$BUILD_LOCK" | sha256sum | cut -c1-16)"
build_id=$(cat pyproject.toml setup.py run.sh csrc/*.cpp csrc/*.h csrc/cuda/* 2>/dev/null | sha256sum | cut -c1-16)
want="$lock_id $build_id"
have=$(cat "$VENV/.frontier-installed" 2>/dev/null || true)

if [ "$have" != "$want" ]; then
    # A venv installed from another lock would keep packages the new lock dropped: start it afresh.
    if [ -n "$have" ] && [ "${have% *}" != "$lock_id" ]; then
        echo "run.sh: the lock changed; recreating $VENV" >&2
        rm -rf "$VENV"
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    echo "run.sh: installing Frontier into $VENV ($([ $locked = 1 ] && echo "locked: $LOCK" || echo UNLOCKED))" >&2
    # (pip's notes about package names missing from a configured local index are noise here)
    pip_q() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
    if [ $locked = 1 ]; then
        # 1. torch and the build tools: DeepSpeed's sdist and frontier._C build against this torch.
        pip_q --require-hashes -r "$BUILD_LOCK"
        # 2. everything else, hash-checked; DeepSpeed builds without isolation (no second torch).
        DS_BUILD_OPS=0 pip_q --require-hashes --no-build-isolation -r "$LOCK"
    else
        echo "run.sh: WARNING: the locks are for CPython 3.11 on Linux x86-64, this is $("$VENV/bin/python" -c \
            'import platform; print(platform.python_implementation(), platform.python_version(), platform.system(), platform.machine())'):" \
            "installing the newest versions pyproject.toml allows; results may differ from the README's" >&2
        # torch first, explicitly: a bare `torch` requirement with none installed pulls a multi-GB CUDA build.
        "$VENV/bin/python" -c 'import torch' 2>/dev/null || pip_q "${TORCH_SPEC:-torch==2.13.0}"
        pip_q setuptools wheel ninja pybind11
        "$VENV/bin/python" -c 'import deepspeed' 2>/dev/null || DS_BUILD_OPS=0 pip_q --no-build-isolation deepspeed
        pip_q --no-build-isolation -e ".[dev]"
    fi
    # Frontier itself (compiles frontier._C); its dependencies are already in place.
    pip_q --no-deps --no-build-isolation -e .
    if [ $locked = 1 ]; then
        "$VENV/bin/python" -m frontier.utils.lock record "$LOCK" "$FLAVOUR" >/dev/null
        "$VENV/bin/python" -m frontier.utils.lock check  # the environment equals the lock, or say how not
    else
        rm -f "$VENV/frontier-lock.json"
    fi
    echo "$want" > "$VENV/.frontier-installed"
fi
export PATH="$PWD/$VENV/bin:$PATH" VIRTUAL_ENV="$PWD/$VENV"
[ $# -gt 0 ] || exit 0
exec "$@"
