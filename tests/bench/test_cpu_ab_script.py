"""bench/cpu_ab.py runs both measurements end to end (one round each: the figures themselves are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("what", "variants"), [
    ("gelu", ["gelu_new", "gelu_pytorch_tanh", "gelu "]),
    ("cross_entropy", ["logsumexp + gather (before)", "F.cross_entropy (now)"]),
])  # fmt: skip
def test_each_variant_is_timed(what: str, variants: list[str]) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_ab.py"), what, "--rounds", "1", "--per-round", "2"],
                          capture_output=True, text=True, timeout=300, cwd="/")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "median" in line]
    assert len(lines) == len(variants)
    for variant in variants:
        assert any(line.strip().startswith(variant.strip()) for line in lines), variant


@pytest.mark.parametrize(("args", "message"), [
    (["swiglu"], "invalid choice: 'swiglu'"),
    (["gelu", "--rounds", "1", "--per-round", "1"], "at least 2 calls"),
    (["gelu", "--rounds", "0"], "--rounds and --per-round must be at least 1"),
])  # fmt: skip
def test_bad_arguments_are_refused_before_any_timing(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_ab.py"), *args], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr
