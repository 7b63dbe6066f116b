#!/usr/bin/env python3
"""Summarise the output folder of bench/gpu/run.sh as markdown: print it and write summary.md there.

    python3 bench/gpu/summarize.py OUT_DIR [--no-write]

Reads what run.sh leaves in OUT_DIR (any file may be missing: a phase that failed or ran out of time
leaves less, and the summary says so):

- phases.tsv    each phase's status, exit code, seconds and limit
- versions.txt  the ``VERSIONS_JSON {...}`` line (GPU, driver, torch, triton, transformers, deepspeed)
- tests.xml     JUnit XML of the GPU tests (else the pytest summary line of the tests phase in run.log)
- bench.json    pytest-benchmark JSON: per benchmark group the kernel (``triton``/``frontier_*``) against
                the group's reference (torch eager, torch fused AdamW, SDPA flash...), and the achieved
                GB/s or TFLOP/s the benchmark recorded against the ceilings (tests/bench/conftest.py)
- train.json    the training runs' metrics.json, speed.json and logged rows

Ceilings: the ones measured in the same run (tests/bench/conftest.py's device_limits, recovered from each
benchmark's rate and fraction) and, for comparison, an H200's measured on this workplace's machines
(/work/.library/device/KINDS.md): 4.3 TB/s device-to-device copy (bytes read + written) and 790 TFLOP/s
dense bf16 (8192^3 matmul). speed.json's MFU uses frontier's datasheet peak (989 TFLOP/s bf16 for an
H200, frontier/train/monitor/metrics.py); the summary adds the MFU against the measured 790.

The full summary is printed, ending with a short headline table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

H200_COPY_GBPS = 4300.0  # measured device-to-device copy, bytes read + written
H200_BF16_TFLOPS = 790.0  # measured dense bf16 matmul (8192^3, random data)

# implementations that are frontier's own kernels, and the reference each group is compared with (first found)
KERNEL_PREFIXES = ("triton", "frontier")
REFERENCES = ("torch_eager", "eager", "torch_fused", "sdpa_flash", "sdpa", "eager_bf16", "torch_foreach")


@dataclass
class Tests:
    source: str = "missing"
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float | None = None
    problems: list[str] = field(default_factory=list)  # "FAILED name: first line of the message"
    summary_line: str = ""

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


@dataclass
class BenchCase:
    group: str
    impl: str
    median_s: float
    rounds: int
    extra: dict[str, Any]

    @property
    def is_kernel(self) -> bool:
        return self.impl.startswith(KERNEL_PREFIXES)


# ------------------------------------------------------------------------------------------ readers


def read_phases(out: Path) -> list[dict[str, str]]:
    path = out / "phases.tsv"
    if not path.is_file():
        return []
    lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return []
    header, rows = lines[0], lines[1:]
    return [dict(zip(header, row)) for row in rows]


def read_versions(out: Path) -> dict[str, Any]:
    path = out / "versions.txt"
    if not path.is_file():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("VERSIONS_JSON "):
            try:
                data = json.loads(line.removeprefix("VERSIONS_JSON "))
            except json.JSONDecodeError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _first_line(text: str | None, limit: int = 160) -> str:
    lines = [x.strip() for x in (text or "").strip().splitlines() if x.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def read_junit(path: Path) -> Tests | None:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    tests = Tests(source=path.name)
    seconds = 0.0
    for suite in root.iter("testsuite"):
        seconds += float(suite.get("time") or 0.0)
    tests.seconds = seconds
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            tests.failed += 1
            tests.problems.append(f"FAILED {name}: {_first_line(failure.get('message') or failure.text)}")
        elif error is not None:
            tests.errors += 1
            tests.problems.append(f"ERROR {name}: {_first_line(error.get('message') or error.text)}")
        elif skipped is not None:
            tests.skipped += 1
        else:
            tests.passed += 1
    return tests


_PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)")
_PYTEST_SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+)(?: in ([\d.]+)s)?.*$")


def read_tests_log(out: Path) -> Tests | None:
    """The pytest summary line of the tests phase in run.log (when no JUnit XML was written)."""
    path = out / "run.log"
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    start = text.find("=== [tests] start")
    if start < 0:
        return None
    end = text.find("=== [tests] ", start + 1)
    segment = text[start : end if end > 0 else len(text)]
    found: Tests | None = None
    for line in segment.splitlines():
        match = _PYTEST_SUMMARY.match(line.strip())
        if not match or " in " not in line:
            continue
        tests = Tests(source="run.log", summary_line=line.strip("= ").strip())
        for count, word in _PYTEST_COUNTS.findall(match.group(1)):
            n = int(count)
            if word == "passed":
                tests.passed = n
            elif word == "failed":
                tests.failed = n
            elif word.startswith("error"):
                tests.errors = n
            elif word == "skipped":
                tests.skipped = n
        tests.seconds = float(match.group(2)) if match.group(2) else None
        found = tests
    if found is not None:
        found.problems = [line.strip() for line in segment.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return found


def read_tests(out: Path) -> Tests:
    junit = out / "tests.xml"
    tests = read_junit(junit) if junit.is_file() else None
    return tests or read_tests_log(out) or Tests()


def _impl(bench: dict[str, Any]) -> str:
    params = bench.get("params") or {}
    for key in ("provider", "impl"):
        if isinstance(params.get(key), str):
            return str(params[key])
    name = str(bench.get("name", "?"))
    return name[name.find("[") + 1 : name.rfind("]")] if "[" in name else name


def read_bench(out: Path) -> list[BenchCase] | None:
    path = out / "bench.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    cases = []
    for bench in data.get("benchmarks", []):
        stats = bench.get("stats") or {}
        if "median" not in stats:
            continue
        cases.append(
            BenchCase(
                group=str(bench.get("group") or bench.get("name", "?")),
                impl=_impl(bench),
                median_s=float(stats["median"]),
                rounds=int(stats.get("rounds", 0)),
                extra=dict(bench.get("extra_info") or {}),
            )
        )
    return cases


def read_train(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "train.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------ figures


def measured_ceilings(cases: list[BenchCase]) -> tuple[float | None, float | None]:
    """(copy GB/s, bf16 TFLOP/s) measured in the run: a benchmark's rate divided by its fraction of them."""
    copy = [c.extra["GB/s"] / c.extra["frac_copy_bw"] for c in cases if _positive(c.extra, "GB/s", "frac_copy_bw")]
    mm = [c.extra["TFLOP/s"] / c.extra["frac_bf16_mm"] for c in cases if _positive(c.extra, "TFLOP/s", "frac_bf16_mm")]
    return (statistics.median(copy) if copy else None, statistics.median(mm) if mm else None)


def _positive(extra: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(extra.get(k), (int, float)) and extra[k] > 0 for k in keys)


def rate(case: BenchCase) -> tuple[str, str, str]:
    """(achieved rate, % of the ceiling measured in the run, % of the H200 reference ceiling)."""
    e = case.extra
    if _positive(e, "TFLOP/s"):
        frac = f"{100 * e['frac_bf16_mm']:.0f}%" if _positive(e, "frac_bf16_mm") else "-"
        return f"{e['TFLOP/s']:.0f} TFLOP/s", frac, f"{100 * e['TFLOP/s'] / H200_BF16_TFLOPS:.0f}%"
    if _positive(e, "GB/s"):
        frac = f"{100 * e['frac_copy_bw']:.0f}%" if _positive(e, "frac_copy_bw") else "-"
        return f"{e['GB/s']:.0f} GB/s", frac, f"{100 * e['GB/s'] / H200_COPY_GBPS:.0f}%"
    return "-", "-", "-"


def kernel_rows(cases: list[BenchCase]) -> list[dict[str, Any]]:
    """One row per (group, kernel implementation): its median against the group's reference."""
    groups: dict[str, list[BenchCase]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    rows = []
    for group, members in groups.items():
        by_impl = {c.impl: c for c in members}
        ref = next((by_impl[r] for r in REFERENCES if r in by_impl), None)
        others = [c for c in members if not c.is_kernel]
        fastest = min(others, key=lambda c: c.median_s) if others else None
        for kernel in (c for c in members if c.is_kernel):
            achieved, frac_run, frac_h200 = rate(kernel)
            rows.append(
                {
                    "group": group,
                    "kernel": kernel.impl,
                    "kernel_ms": kernel.median_s * 1e3,
                    "ref": ref.impl if ref else None,
                    "ref_ms": ref.median_s * 1e3 if ref else None,
                    "speedup": ref.median_s / kernel.median_s if ref and kernel.median_s > 0 else None,
                    "fastest_other": fastest.impl if fastest else None,
                    "vs_fastest": fastest.median_s / kernel.median_s if fastest and kernel.median_s > 0 else None,
                    "achieved": achieved,
                    "frac_run": frac_run,
                    "frac_h200": frac_h200,
                    "peak_extra_frac_of_eager": kernel.extra.get("peak_extra_frac_of_eager"),
                }
            )
    return rows


def steady_tokens_per_s(entry: dict[str, Any]) -> float | None:
    """Median tokens/s of the logged intervals after the first (which holds compilation and warm-up)."""
    values = [r["tokens_per_s"] for r in entry.get("rows", []) if isinstance(r.get("tokens_per_s"), (int, float))]
    values = values[1:] if len(values) > 1 else values
    values = [v for v in values if v > 0]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------------ rendering


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def render(out: Path) -> str:
    phases = read_phases(out)
    versions = read_versions(out)
    tests = read_tests(out)
    cases = read_bench(out)
    train = read_train(out)
    lines: list[str] = [f"# Frontier GPU run: {out}", ""]

    if versions:
        parts = [
            f"GPU {versions.get('gpu', '?')} (sm {versions.get('capability', '?')}, {versions.get('sms', '?')} SMs)",
            f"driver {versions.get('driver', '?')}",
            f"torch {versions.get('torch', '?')} (CUDA {versions.get('torch_cuda', '?')})",
            f"triton {versions.get('triton', '?')}",
            f"transformers {versions.get('transformers', '?')}",
            f"deepspeed {versions.get('deepspeed', '?')} ({versions.get('deepspeed_accelerator', '?')})",
            f"python {versions.get('python', '?')}",
        ]
        lines += [", ".join(parts), ""]
    else:
        lines += ["versions: missing (versions.txt has no VERSIONS_JSON line)", ""]

    lines += ["## Phases", ""]
    if phases:
        rows = [[p.get(k, "") for k in ("phase", "status", "exit", "seconds", "limit")] for p in phases]
        lines += table(["phase", "status", "exit", "seconds", "limit s"], rows)
    else:
        lines.append("phases.tsv: missing")
    lines.append("")

    lines += ["## GPU tests (pytest -m gpu)", ""]
    if tests.source == "missing":
        lines.append("no tests.xml and no pytest summary in run.log")
    else:
        took = f" in {tests.seconds:.0f} s" if tests.seconds is not None else ""
        lines.append(
            f"{tests.passed} passed, {tests.failed} failed, {tests.errors} errors, {tests.skipped} skipped"
            f"{took} (from {tests.source})"
        )
        lines += [f"- {p}" for p in tests.problems[:30]]
        if len(tests.problems) > 30:
            lines.append(f"- ... and {len(tests.problems) - 30} more")
    lines.append("")

    lines += ["## Benchmarks (median of each case; speedup = reference median / kernel median)", ""]
    krows: list[dict[str, Any]] = []
    if cases is None:
        lines.append("bench.json: missing")
    elif not cases:
        lines.append("bench.json: no benchmark ran")
    else:
        copy, mm = measured_ceilings(cases)
        lines.append(
            f"ceilings measured in this run: copy {_fmt(copy, '.0f', '?')} GB/s, bf16 matmul {_fmt(mm, '.0f', '?')} "
            f"TFLOP/s; H200 reference: {H200_COPY_GBPS:.0f} GB/s, {H200_BF16_TFLOPS:.0f} TFLOP/s"
        )
        lines.append("")
        krows = kernel_rows(cases)
        rows = []
        for r in krows:
            fastest = ""
            if r["fastest_other"] and r["fastest_other"] != r["ref"] and r["vs_fastest"] is not None:
                fastest = f"{r['fastest_other']} {r['vs_fastest']:.2f}x"
            note = r["peak_extra_frac_of_eager"]
            rows.append(
                [
                    r["group"],
                    r["kernel"],
                    _fmt(r["kernel_ms"], ".3f"),
                    r["ref"] or "-",
                    _fmt(r["ref_ms"], ".3f"),
                    _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] is not None else ""),
                    fastest or "-",
                    r["achieved"],
                    r["frac_run"],
                    r["frac_h200"] + (f"; peak mem {100 * note:.0f}% of eager" if isinstance(note, float) else ""),
                ]
            )
        lines += table(
            ["group", "kernel", "ms", "reference", "ref ms", "speedup", "vs fastest other", "achieved",
             "% ceiling (run)", "% H200 ceiling"],
            rows,
        )  # fmt: skip
        lines += ["", "<details><summary>every case</summary>", ""]
        rows = [[c.group, c.impl, _fmt(c.median_s * 1e3, ".3f"), str(c.rounds), *rate(c)] for c in cases]
        lines += table(["group", "impl", "median ms", "rounds", "achieved", "% ceiling (run)", "% H200"], rows)
        lines += ["", "</details>"]
    lines.append("")

    lines += ["## Training (bf16, kernels auto, DeepSpeed)", ""]
    train_cells: dict[str, str] = {}
    if not train:
        lines.append("train.json: missing or empty")
    else:
        rows = []
        for name, entry in sorted(train.items()):
            metrics, speed, run = entry.get("metrics", {}), entry.get("speed", {}), entry.get("run", {})
            steady = steady_tokens_per_s(entry)
            fpt = metrics.get("flops_per_token")
            on_gpu = str(run.get("device", "")).startswith("cuda")
            mfu_790 = steady * fpt / (H200_BF16_TFLOPS * 1e12) if steady and fpt and on_gpu else None
            mfu = speed.get("mfu")
            rows.append(
                [
                    f"{name}: {entry.get('label', '')}",
                    _fmt(metrics.get("params"), ",d") if isinstance(metrics.get("params"), int) else "-",
                    f"{_fmt(metrics.get('steps'), 'd')} ({run.get('stop_reason', '?')})",
                    _fmt(metrics.get("train_loss"), ".3f"),
                    _fmt(metrics.get("final_val_loss"), ".3f"),
                    _fmt(speed.get("tokens_per_s"), ",.0f"),
                    _fmt(steady, ",.0f"),
                    f"{100 * mfu:.1f}%" if isinstance(mfu, (int, float)) else "-",
                    f"{100 * mfu_790:.1f}%" if mfu_790 is not None else "-",
                    str(run.get("device", "?")),
                ]
            )
            train_cells[name] = (
                f"{_fmt(steady, ',.0f')} tok/s steady, MFU {f'{100 * mfu_790:.1f}%' if mfu_790 else '-'} of 790 TF"
                if run
                else "no metrics"
            )
        lines += table(
            ["run", "params", "steps", "loss", "val loss", "tok/s (all)", "tok/s (steady)", "MFU (989 TF)",
             "MFU (790 TF, steady)", "device"],
            rows,
        )  # fmt: skip
    lines.append("")

    # the headline, last
    lines += ["## Headline", ""]
    bad = [f"{p['phase']} {p['status']}" for p in phases if p.get("status") not in ("ok",)]
    head: list[list[str]] = [
        [
            "GPU",
            f"{versions.get('gpu', '?')}, torch {versions.get('torch', '?')}, triton {versions.get('triton', '?')}",
        ],
        ["phases", "all ok" if phases and not bad else (", ".join(bad) if bad else "missing")],
        [
            "GPU tests",
            f"{tests.passed} passed, {tests.failed} failed, {tests.errors} errors, {tests.skipped} skipped"
            if tests.source != "missing"
            else "missing",
        ],
    ]
    speedups = [r["speedup"] for r in krows if r["speedup"] is not None]
    if speedups:
        worst = min(krows, key=lambda r: r["speedup"] if r["speedup"] is not None else float("inf"))
        head.append(
            [
                "kernels vs reference",
                f"{len(krows)} cases, median {statistics.median(speedups):.2f}x, "
                f"slowest {worst['speedup']:.2f}x ({worst['group']}, {worst['kernel']})",
            ]
        )
    else:
        head.append(["kernels vs reference", "no benchmark results"])
    for name in sorted(train):
        head.append([f"train {name}", train_cells.get(name, "no metrics")])
    lines += table(["what", "result"], head)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder run.sh wrote ($OUT)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write summary.md")
    ns = parser.parse_args(argv)
    if not ns.out.is_dir():
        parser.error(f"{ns.out} is not a directory")
    text = render(ns.out)
    if not ns.no_write:
        try:
            (ns.out / "summary.md").write_text(text)
        except OSError as exc:  # a read-only copy of the folder: print only
            sys.stderr.write(f"summarize: summary.md not written ({exc.strerror}); printing only\n")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
