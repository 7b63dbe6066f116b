#!/usr/bin/env bash
# Refresh the locks (the one documented command): bash requirements/lock.sh
#
# Writes, for each install flavour F in cpu and cuda (inputs: pyproject.toml + requirements/F.in):
#   requirements/F.txt        the complete resolved set, hash-pinned (what run.sh installs)
#   requirements/F-build.txt  its closed subset that must exist before anything is built
#                             (torch + build tools: DeepSpeed's sdist and frontier._C build against it)
# The locks target CPython 3.11 on Linux x86-64 (glibc 2.28+), the project's CI machine. uv resolves;
# pip installs (run.sh). The CPU build of torch is found through pip's configured find-links/index
# (`pip config get global.find-links`), or TORCH_CPU_FIND_LINKS / TORCH_CPU_INDEX when set.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PYVER=3.11
PLATFORM=x86_64-manylinux_2_28

uv=$(command -v uv || true)
if [ -z "$uv" ] || [ "$("$uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    tools=$(mktemp -d)
    trap 'rm -rf "$tools"' EXIT
    python3 -m venv "$tools" && "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
    uv="$tools/bin/uv"
fi

cpu_source=()
links=${TORCH_CPU_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
for link in $links; do cpu_source+=(--find-links "$link"); done
[ -z "${TORCH_CPU_INDEX:-}" ] || cpu_source+=(--extra-index-url "$TORCH_CPU_INDEX" --index-strategy unsafe-best-match)

compile() {  # compile OUT INPUT... [-- uv options]
    local out=$1; shift
    "$uv" pip compile --quiet --generate-hashes --python-version "$PYVER" --python-platform "$PLATFORM" \
        --no-emit-find-links --no-emit-index-url --custom-compile-command "bash requirements/lock.sh" \
        -o "$out" "$@"
}
for flavour in cpu cuda; do
    extra=()
    [ "$flavour" = cuda ] || extra=("${cpu_source[@]}")
    compile "requirements/$flavour.txt" pyproject.toml "requirements/$flavour.in" --extra dev --extra trackers ${extra[@]+"${extra[@]}"}
    compile "requirements/$flavour-build.txt" "requirements/$flavour.in" -c "requirements/$flavour.txt" \
        ${extra[@]+"${extra[@]}"}
    echo "lock.sh: requirements/$flavour.txt ($(grep -c '^[a-z0-9]' "requirements/$flavour.txt") packages)"
done
