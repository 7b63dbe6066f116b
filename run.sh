#!/usr/bin/env bash
# Install Frontier into ./.venv from the hash-checked lock (once; again when the lock or the build inputs
# change), check that the venv still equals the lock, then run a command in it.
#   bash run.sh snakemake --cores all     # the default pipeline, end to end
#   bash run.sh pytest                    # the test suite
# Environment: FRONTIER_LOCK=cpu|cuda (default cpu: requirements/cpu.txt; cuda: torch's CUDA 13 build),
# FRONTIER_VENV (default .venv), PYTHON (interpreter for the venv, default python3), MAX_JOBS (extension build),
# FRONTIER_REINSTALL=1 (build the venv afresh from the lock: the repair when the check below finds drift).
# Refresh the locks with `bash requirements/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FRONTIER_VENV:-.venv}
VENV=${VENV%/}
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
again="bash run.sh$(printf ' %q' "$@")"

# One run.sh at a time installs, swaps or checks $VENV: an exclusive flock on $VENV.lock, held from here to
# just before the command starts (the kernel drops it when this process ends, however it ends). A second
# run.sh waits, with a message, rather than refusing: the first's install is then the second's too, and two
# runs started together (a pipeline and a test run) both go ahead. The command itself runs unlocked.
if command -v flock >/dev/null; then
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    if ! flock -n 9; then
        echo "run.sh: another run.sh is installing or checking $VENV; waiting for it" >&2
        flock 9
    fi
else
    echo "run.sh: WARNING: no flock(1) (util-linux): not guarded against a concurrent run.sh" >&2
fi
have=$(cat "$VENV/.frontier-installed" 2>/dev/null || true)

# A rebuild (below) keeps the working venv at $VENV.old-PID until the new one is complete and checked. With
# the lock held, no rebuild is running: one found was interrupted (killed, the machine lost), and is
# finished if its new venv was complete (installed and marked), undone otherwise.
for old in "$VENV".old-*; do
    [ -d "$old" ] || continue
    if [ -n "$have" ]; then
        rm -rf "$old"
    else
        echo "run.sh: restoring $VENV, which an interrupted rebuild had moved to $old" >&2
        rm -rf "$VENV" && mv "$old" "$VENV"
        have=$(cat "$VENV/.frontier-installed" 2>/dev/null || true)
    fi
done

# The install, into $VENV (a new venv, or one whose lock is unchanged: pip then installs only what differs).
# Its last step marks it installed; the check below, before the command, compares it with the lock.
install() {
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
    # Parameter files are data: Snakemake would evaluate YTE templates in a --configfile before any of
    # Frontier's code runs; this .pth arms frontier.utils.params_guard in every process of the venv.
    "$VENV/bin/python" -c 'from frontier.utils.params_guard import install; install()'
    if [ $locked = 1 ]; then
        # the marker, and each installed file's stat once it is found equal to its RECORD hash
        "$VENV/bin/python" -m frontier.utils.lock record "$LOCK" "$FLAVOUR" >/dev/null
    else
        rm -f "$VENV/frontier-lock.json" "$VENV/frontier-verified.marshal"
    fi
    echo "$want" > "$VENV/.frontier-installed"
}

if [ "$have" != "$want" ] || [ -n "${FRONTIER_REINSTALL:-}" ]; then
    if { [ -n "${FRONTIER_REINSTALL:-}" ] && [ -e "$VENV" ]; } || { [ -n "$have" ] && [ "${have% *}" != "$lock_id" ]; }; then
        # A venv installed from another lock would keep packages the new lock dropped, and one asked to
        # be reinstalled may hold anything: build a new one. It must be built at $VENV itself (a venv's
        # scripts and pyvenv.cfg hold its absolute path, so one built elsewhere cannot be moved there),
        # so the working one waits beside it and comes back if the install fails: a lock pip rejects (a
        # bad hash, an unreachable index) leaves the venv as it was, never a half-installed one.
        old="$VENV.old-$$"
        echo "run.sh: $([ -n "${FRONTIER_REINSTALL:-}" ] && echo "FRONTIER_REINSTALL" || echo "the lock changed"):" \
            "building a new $VENV (the current one waits at $old until it is complete)" >&2
        mv "$VENV" "$old"
        trap 'rm -rf "$VENV"; mv "$old" "$VENV"; echo "run.sh: interrupted; $VENV is as it was" >&2; exit 130' INT TERM
        set +e
        (set -e; install)
        rc=$?
        set -e
        if [ $rc != 0 ]; then
            rm -rf "$VENV" && mv "$old" "$VENV"
            echo "run.sh: installing $LOCK into a new $VENV failed (exit $rc, above); $VENV is unchanged" >&2
            exit $rc
        fi
        rebuilt=$old  # removed once the new venv passes the check below; put back if it does not
    else
        install  # a first install, or new build inputs with the same lock
    fi
fi

# Every run, before the command: the venv still equals the lock (each package at its pinned version,
# each installed file as its RECORD hashes it, no file that no package installed; ~1 s for the whole venv,
# as unchanged files are not re-read). Drift is refused, not repaired: a reinstall takes minutes and the
# network, and an automatic one would silently throw away what made the venv differ, which is either
# someone's deliberate edit (a print in transformers while debugging) or something to look at before
# trusting any result from it. Right after an install this is the install's own check (the only one).
# `python -S`: nothing from the venv's site-packages (a .pth file) runs before it is checked.
if [ $locked = 1 ] && ! diffs=$("$VENV/bin/python" -S -E -m frontier.utils.lock check "$VENV" 2>&1); then
    if [ -n "${rebuilt:-}" ]; then
        rm -rf "$VENV" && mv "$rebuilt" "$VENV"
        echo "run.sh: the new $VENV, installed from $LOCK, differs from it:" >&2
        sed 's/^lock: /  /' <<<"$diffs" >&2
        echo "run.sh: $VENV is unchanged (the one from before); the lock needs fixing" >&2
        exit 1
    fi
    echo "run.sh: $VENV differs from $LOCK, the lock it was installed from:" >&2
    sed 's/^lock: /  /' <<<"$diffs" >&2
    echo "run.sh: not running in it; to reinstall it from the lock: FRONTIER_REINSTALL=1 $again" >&2
    exit 1
fi
if [ -n "${rebuilt:-}" ]; then
    trap - INT TERM
    rm -rf "$rebuilt"
fi
exec 9>&-  # the lock, released: the command (a pipeline that runs for hours) must not hold it
venv_dir=$VENV
[[ $venv_dir = /* ]] || venv_dir=$PWD/$venv_dir  # FRONTIER_VENV may be absolute
export PATH="$venv_dir/bin:$PATH" VIRTUAL_ENV="$venv_dir"
[ $# -gt 0 ] || exit 0
exec "$@"
