#!/usr/bin/env bash
# One call on a lent GPU machine (H200, no network): install the carried wheels, build frontier._C for
# sm_90, record versions, run the GPU tests, the GPU benchmarks and two short bf16 training runs, then
# summarise. See bench/gpu/README.md for the exact device command and how to rebuild the wheels.
#
#   bash bench/gpu/run.sh            # writes into $OUT (default /tmp/frontier-gpu-out)
#
# Every phase has its own time limit inside one overall budget (GPU_RUN_BUDGET_S, default 420 s), so
# the whole script ends in about 7 minutes; a phase that fails or runs out of time is recorded and the
# next one runs. Files in $OUT (7, the device tool brings back at most 8):
#   run.log      everything printed (this script's output, tee'd)
#   versions.txt nvidia-smi, nvcc, the Python packages, `frontier env`, and one VERSIONS_JSON line
#   phases.tsv   phase, status (ok | failed | timeout | skipped), exit code, seconds, limit
#   tests.xml    JUnit XML of `pytest -m gpu` over tests/{kernels,csrc,optim,train}
#   bench.json   pytest-benchmark JSON of tests/bench (kernel vs reference, GB/s, TFLOP/s)
#   train.json   metrics, speed and logged rows of the two training runs
#   summary.md   bench/gpu/summarize.py's tables (also printed last)
# Knobs (environment): OUT, PYTHON (python3), GPU_RUN_BUDGET_S (420), GPU_RUN_WORK (/tmp/frontier-gpu),
# TEST_WORKERS (4; 0 = no xdist), TEST_PATHS (what `pytest -m gpu` collects), BENCH_K (a pytest -k expression; default leaves out torch.compile and
# Liger baselines, whose compile time does not fit the budget; BENCH_K=all runs every case),
# TRAIN_B (1; 0 skips the 125m-preset throughput run), SKIP_PHASES (phase names not to run, e.g. "bench train_a"
# for a second call that re-checks tests and training only), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (16).
set -uo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/../.." && pwd)
cd "$ROOT" || exit 2

export OUT=${OUT:-/tmp/frontier-gpu-out}
export PY=${PYTHON:-python3}
export WORK=${GPU_RUN_WORK:-/tmp/frontier-gpu}
export BUDGET=${GPU_RUN_BUDGET_S:-420}
export TEST_WORKERS=${TEST_WORKERS:-4}
export BENCH_K=${BENCH_K:-not torch_compile and not compiled_reference and not liger}
export TRAIN_B=${TRAIN_B:-1}
export SKIP_PHASES=${SKIP_PHASES:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} DS_BUILD_OPS=0
# DeepSpeed must pick its CUDA accelerator here; TRITON_INTERPRET would run the kernels on the CPU.
unset DS_ACCELERATOR TRITON_INTERPRET FRONTIER_TEST_CPU FRONTIER_NO_CUDA
# the repo first (frontier and tests import from the tree even if the editable install fails), then the wheels
case ":${PYTHONPATH:-}:" in
    *":$ROOT:/tmp/site:"*) ;; # a phase: its parent set it
    *) export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" ;;
esac
PARAMS="$ROOT/params.yaml"

# ---------------------------------------------------------------------------------------------------
# Phases: each runs in its own process (`bash run.sh --phase NAME`) under `timeout`, so one limit covers
# everything it starts. SIGINT first: pytest then still writes its JUnit / benchmark JSON, and a
# training run checkpoints; SIGKILL 15 s later.

phase_wheels() {
    shopt -s nullglob
    local wheels=("$ROOT"/.whl/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "no wheels in $ROOT/.whl: name .whl in the run's carry (deepspeed, hjson, pydantic, zstandard... are missing there)"
        return 1
    fi
    ls -l "${wheels[@]}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
}

phase_versions() {
    {
        echo "## nvidia-smi"
        nvidia-smi || echo "(nvidia-smi failed: $?)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
            --format=csv || true
        echo "## nvcc"
        nvcc --version 2>&1 | tail -2 || echo "(no nvcc on PATH)"
        echo "## g++"
        g++ --version 2>&1 | head -1 || true
        echo "## python"
        "$PY" - <<'EOF'
import importlib.metadata as md
import json
import platform
import sys

info = {"python": platform.python_version(), "executable": sys.executable}
for name in ("torch", "triton", "transformers", "deepspeed", "tokenizers", "peft", "safetensors", "numpy",
             "pydantic", "pytest", "pytest-benchmark", "pytest-timeout", "pytest-xdist", "ninja", "setuptools"):
    try:
        info[name] = md.version(name)
    except md.PackageNotFoundError:
        info[name] = None
try:
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["capability"] = f"{p.major}.{p.minor}"
        info["sms"] = p.multi_processor_count
        info["gpu_mem_gib"] = round(p.total_memory / 2**30, 1)
    from torch.utils.cpp_extension import CUDA_HOME

    info["cuda_home"] = CUDA_HOME
except Exception as exc:  # noqa: BLE001 - a broken torch is what this line must report
    info["torch_error"] = repr(exc)
try:
    import pynvml

    pynvml.nvmlInit()
    info["driver"] = pynvml.nvmlSystemGetDriverVersion()
except Exception as exc:  # noqa: BLE001
    info["driver_error"] = repr(exc)
try:
    from deepspeed.accelerator import get_accelerator

    info["deepspeed_accelerator"] = get_accelerator()._name
except Exception as exc:  # noqa: BLE001
    info["deepspeed_error"] = repr(exc)
for key, value in info.items():
    print(f"{key:24} {value}")
print("VERSIONS_JSON " + json.dumps(info))
EOF
    } 2>&1 | tee "$OUT/versions.txt"
}

phase_build() {
    # frontier itself, no dependencies, against the machine's torch; compiles frontier._C (C++ and CUDA, sm_90)
    if ! "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$ROOT"; then
        echo "editable install failed; building the extension in place instead"
        "$PY" setup.py build_ext --inplace -j "$MAX_JOBS" || return 1
    fi
    "$PY" - <<'EOF'
import torch

from frontier.ext import load_extension
from frontier.optim import ops

print("frontier._C:", load_extension(build=False))
ops.load_ops(build=False)
print("fused AdamW kernels: cpu", ops.has_kernel("cpu"), "cuda", ops.has_kernel("cuda"))
if torch.cuda.is_available() and not ops.has_kernel("cuda"):
    raise SystemExit("frontier._C has no CUDA kernel")
EOF
    { echo "## frontier env"; "$PY" -m frontier env; } 2>&1 | tee -a "$OUT/versions.txt"
}

phase_data() {
    # a small corpus from this machine's standard library: nothing is downloaded
    rm -rf "$WORK/data"
    local set=(--params "$PARAMS" --set prepare.max_docs="${DATA_DOCS:-300}")
    "$PY" -m frontier prepare "${set[@]}" --out "$WORK/data/prepared" &&
        "$PY" -m frontier tokenizer "${set[@]}" --data "$WORK/data/prepared" --out "$WORK/data/tokenizer" &&
        "$PY" -m frontier tokenize "${set[@]}" --data "$WORK/data/prepared" --tokenizer "$WORK/data/tokenizer" \
            --out "$WORK/data/tokens"
}

phase_tests() {
    # shellcheck disable=SC2206 # TEST_PATHS is a list of paths
    local paths=(${TEST_PATHS:-tests/kernels tests/csrc tests/optim tests/train})
    local args=(-m gpu "${paths[@]}" -q -rA -p no:cacheprovider
        --junitxml="$OUT/tests.xml" -o junit_family=xunit2 -o junit_logging=no)
    "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout=120)
    if [ "$TEST_WORKERS" -gt 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
        # compile-bound tests (Triton, Inductor) in parallel; a crashing test takes down one worker, not the run
        args+=(-n "$TEST_WORKERS")
        export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
    elif "$PY" -c "import xdist" 2>/dev/null; then
        args+=(-n 0)  # one process (tests/conftest.py would otherwise start a worker per core)
    fi
    "$PY" -m pytest "${args[@]}"
}

phase_bench() {
    # cheapest and most important first: a SIGINT at the limit still writes what ran to bench.json
    local files=(tests/bench/test_fused_adamw_bench.py tests/bench/test_rms_norm_bench.py
        tests/bench/test_swiglu_bench.py tests/bench/test_rope_bench.py tests/bench/test_cross_entropy_bench.py
        tests/bench/test_attention_bench.py tests/bench/test_fused_linear_cross_entropy_bench.py)
    local args=("${files[@]}" -m gpu --benchmark-only --benchmark-json="$OUT/bench.json" "--benchmark-columns=min,median,max,rounds"
        --benchmark-sort=name -q -rfEs -p no:cacheprovider)
    [ "$BENCH_K" != all ] && args+=(-k "$BENCH_K")
    "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout=90)
    "$PY" -c "import xdist" 2>/dev/null && args+=(-p no:xdist)
    "$PY" -m pytest "${args[@]}"
}

# train_run NAME LIMIT_S OVERRIDES...: bf16, kernels auto (Triton on CUDA), no progress bar or TensorBoard;
# train.max_minutes ends the loop (exporting metrics) well before the phase's hard limit.
train_run() {
    local name=$1 limit=$2
    shift 2
    local minutes
    minutes=$(awk -v t="$limit" 'BEGIN { m = (t - 35) / 60; if (m < 0.1) m = 0.1; printf "%.2f", m }')
    rm -rf "$WORK/runs/$name" "$WORK/ckpt/$name"
    "$PY" -m frontier train --params "$PARAMS" --data "$WORK/data/tokens" --tokenizer "$WORK/data/tokenizer" \
        --out "$WORK/runs/$name" --checkpoints "$WORK/ckpt/$name" \
        --set engine.precision=bf16 --set train.resume=none --set train.max_minutes="$minutes" \
        --set engine.monitor.progress_bar=false --set engine.monitor.tensorboard=false \
        --set engine.monitor.system_every_s=5 --set train.checkpoint.keep_last=1 --set train.checkpoint.keep_best=false \
        --set launch.nproc_per_node=1 "$@"
}

phase_train_a() {
    # the default Llama sizes (hidden 192, 4 layers, context 128): the end-to-end path on the GPU
    train_run a "$PHASE_LIMIT" --set train.max_steps=150 --set train.log_every=10 --set train.eval_every=150 \
        --set train.eval_batches=4
}

phase_train_b() {
    # the 125m preset at a 1024 context (head dim 64: the Triton attention kernel too): a throughput figure
    train_run b "$PHASE_LIMIT" "${B_SET[@]}"
}

# b's settings, shared by c and d so that their tokens/s compare with b's
B_SET=(--set model.preset=125m --set model.max_seq_len=1024 --set train.micro_batch_size=16 --set train.max_steps=100
    --set train.log_every=10 --set train.eval_every=0 --set schedule.warmup_steps=10)

phase_train_c() {
    # b under torch.compile (Inductor sees into the Triton ops where they are triton_ops)
    train_run c "$PHASE_LIMIT" "${B_SET[@]}" --set engine.compile=true
}

phase_train_d() {
    # b with packed documents: positions restart per document, the Triton kernel's document mask
    train_run d "$PHASE_LIMIT" "${B_SET[@]}" --set train.document_aware=true
}

# has_train_key KEY: whether this checkout's train: or engine: section has the key (runs c and d need keys added
# in 2026-11; the engine keys were train:'s before engine: existed)
has_train_key() {
    "$PY" -c "import dataclasses, sys; from frontier.config import Params; \
sys.exit(0 if any('$1' in {f.name for f in dataclasses.fields(type(getattr(Params(), s)))} \
for s in ('train', 'engine') if hasattr(Params(), s)) else 1)"
}

collect_train() {
    # runs/<name>/{metrics,speed,run}.json and plots/train.csv of each run, in one file
    "$PY" - "$WORK/runs" "$OUT/train.json" <<'EOF'
import csv
import json
import sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
labels = {"a": "default llama (h192 l4 ctx128)", "b": "125m preset, ctx 1024", "c": "b + engine.compile",
          "d": "b + packed documents"}
result = {}
for name in labels:
    d = runs / name
    if not d.is_dir():
        continue
    entry = {"label": labels[name]}
    for part in ("metrics", "speed", "run"):
        f = d / f"{part}.json"
        if f.is_file():
            entry[part] = json.loads(f.read_text())
    rows = d / "plots" / "train.csv"
    if rows.is_file():
        with rows.open() as fh:
            entry["rows"] = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    result[name] = entry
out.write_text(json.dumps(result, indent=1))
print(f"train.json: runs {sorted(result)}")
EOF
}

if [ "${1:-}" = --phase ]; then
    "phase_$2"
    exit $?
fi

# ---------------------------------------------------------------------------------------------------
T0=$SECONDS
GRACE=15 # seconds between SIGINT and SIGKILL
TAB=$(printf '\t')

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/phases.tsv"; }

# run_phase NAME CAP_S RESERVE_S [MIN_S]: run phase NAME for at most CAP_S seconds, leaving RESERVE_S of the
# budget (and the kill grace) to the phases after it; skipped when fewer than MIN_S (20) would be left.
run_phase() {
    local name=$1 cap=$2 reserve=$3 min=${4:-20}
    local left=$((BUDGET - (SECONDS - T0) - reserve - GRACE))
    local limit=$((cap < left ? cap : left))
    if [[ " $SKIP_PHASES " == *" $name "* ]]; then
        echo "=== [$name] skipped: in SKIP_PHASES"
        record "$name" skipped - 0 0
        return 1
    fi
    if [ "$limit" -lt "$min" ]; then
        echo "=== [$name] skipped: ${left}s of the ${BUDGET}s budget left after the ${reserve}s kept for later phases"
        record "$name" skipped - 0 "$limit"
        return 1
    fi
    echo "=== [$name] start at +$((SECONDS - T0))s, limit ${limit}s"
    local start=$SECONDS rc status
    PHASE_LIMIT=$limit timeout -s INT -k "$GRACE" "$limit" bash "$SELF" --phase "$name"
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    echo "=== [$name] $status (exit $rc) after $((SECONDS - start))s"
    record "$name" "$status" "$rc" "$((SECONDS - start))" "$limit"
    [ "$status" = ok ]
}

main() {
    printf 'phase\tstatus\texit\tseconds\tlimit\n' >"$OUT/phases.tsv"
    echo "frontier GPU run: $(date -u +%FT%TZ), repo $ROOT, OUT $OUT, budget ${BUDGET}s, python $(command -v "$PY")"
    # the minimum each later phase keeps: tests 60 s, bench 45 s, train_a 40 s, summary 10 s (c and d get
    # what is left at the end)
    run_phase wheels 60 255
    run_phase versions 45 255
    # the data is CPU work: it runs beside the build, and its log is printed after the build's
    run_phase data 120 0 >"$WORK/data.log" 2>&1 &
    local data_pid=$!
    run_phase build 180 155
    wait "$data_pid"
    cat "$WORK/data.log"
    run_phase tests 150 95
    run_phase bench 100 50
    if grep -q "^data${TAB}ok" "$OUT/phases.tsv"; then
        run_phase train_a 75 10 30
        # start-up, the final checkpoint and the export alone take about 30 s: b needs 50 s to be worth it
        if [ "$TRAIN_B" = 1 ]; then run_phase train_b 80 10 50; else record train_b skipped - 0 0; fi
        # compile costs a minute of Inductor/Triton compilation before the first step
        # (37-65 s of it on the 125m preset with 16 cores, 2026-11-30): c goes before d and takes up to 160 s
        # when earlier phases were skipped; in a full run d gets what is left, if anything
        if has_train_key compile; then run_phase train_c 160 10 70; else record train_c skipped - 0 0; fi
        run_phase train_d 70 10 50
    else
        echo "=== [train] skipped: no data"
        for run in a b c d; do record "train_$run" skipped - 0 0; done
    fi
    collect_train
    echo "=== [summary] at +$((SECONDS - T0))s"
    timeout -k 5 30 "$PY" "$ROOT/bench/gpu/summarize.py" "$OUT"
    # exit status: 0 when every phase that ran passed
    ! cut -f2 "$OUT/phases.tsv" | grep -qE "^(failed|timeout)$"
}

mkdir -p "$OUT" "$WORK"
rm -f "$OUT/run.log"
main 2>&1 | tee -a "$OUT/run.log"
