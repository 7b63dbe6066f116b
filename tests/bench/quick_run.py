"""Run a bench/ script at its --quick toy size, as a user would, and read the report it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_quick(script: Path, tmp_path: Path, report_glob: str) -> tuple[dict[str, Any], Path, str]:
    """`python <script> --quick` from / (a script runs from anywhere); (its JSON report, that file's path, what it printed)."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "--quick", "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [json_file] = out.glob(report_glob)
    return json.loads(json_file.read_text()), json_file, done.stdout
