"""Every Triton kernel compiles for an H100/H200 (sm_90) with the launch settings and argument types a
GPU run gives it -- Triton's launcher and Inductor's -- checked on this CPU machine (tests/kernels/sm90_compile.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frontier.kernels.dispatch import triton_available

SCRIPT = Path(__file__).with_name("sm90_compile.py")
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton")


def test_every_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.is_file(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    failures = [f"{e['kernel']} ({e['floats']} floats, {e['options']}): {e['error']}" for e in report["failed"]]
    assert not failures, "\n\n".join(failures)
    assert not report["cases_failed"], report["cases_failed"]
    assert not report["kernels_not_exercised"], f"add a case to sm90_compile.py for {report['kernels_not_exercised']}"
    kernels = {e["kernel"] for e in report["compiled"]}
    assert {"attn_fwd_kernel", "attn_bwd_dq_kernel", "attn_bwd_dkdv_kernel"} <= kernels
    # kernels with float scalars were also compiled as Inductor passes them (fp64)
    assert {e["kernel"] for e in report["compiled"] if e["floats"] == "fp64"} >= {"attn_fwd_kernel"}
    assert all(e["cubin_bytes"] > 0 for e in report["compiled"])
    assert proc.returncode == 0, proc.stderr[-3000:]
