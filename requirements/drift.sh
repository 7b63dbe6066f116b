#!/usr/bin/env bash
# Drift check (not part of CI's pass/fail): install the NEWEST versions pyproject.toml allows into a
# throwaway copy and venv, print how they differ from the lock, and run the test suite there, so a
# breaking release is seen before users see it. torch stays the locked build unless DRIFT_TORCH names
# another spec (a newer torch is a multi-GB CUDA download).
#   bash requirements/drift.sh                          # the whole suite
#   bash requirements/drift.sh tests/model -k generation # any pytest arguments
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/frontier-drift.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A copy of the working tree (tracked and unignored files), so the build never touches the checkout.
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$work"
cd "$work"
torch_spec=${DRIFT_TORCH:-torch==$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements/cpu.txt)}
"$PY" -m venv .venv
pip_q() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
echo "drift: installing $torch_spec and the newest of everything else" >&2
echo "$torch_spec" > "$work/torch-constraint.txt"  # the eager upgrade below must not replace torch
export PIP_CONSTRAINT="$work/torch-constraint.txt"
pip_q "$torch_spec"
pip_q --upgrade setuptools wheel ninja pybind11
DS_BUILD_OPS=0 pip_q --no-build-isolation --upgrade deepspeed
pip_q --no-build-isolation --upgrade --upgrade-strategy eager -e ".[dev,trackers]"
.venv/bin/python -m frontier.utils.lock record requirements/cpu.txt drift >/dev/null
echo "drift: how the newest allowed versions differ from requirements/cpu.txt:" >&2
.venv/bin/python -m frontier.utils.lock check 2>&1 | sed 's/^lock: /  /' >&2 || true
set +e
.venv/bin/python -m pytest -p no:cacheprovider --deselect tests/test_lock.py::test_this_environment_equals_its_lock "$@"
rc=$?
echo "drift: pytest exited $rc on the newest versions" >&2
exit "$rc"
