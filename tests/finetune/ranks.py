"""`frontier finetune` on two ranks as a user starts it, and the check that they train as one rank does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from frontier.config import Params, dump_resolved
from tests.train.helpers import REPO, read_rows


def zero3_every_weight(tmp_path: Path) -> tuple[str, ...]:
    """Overrides for ZeRO-3 with every parameter partitioned (tiny ones stay whole by default)."""
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    return "engine.zero_stage=3", f"engine.deepspeed_config={ds_json}"


def finetune_stage(params: Params, base: Path, sft: Path, tmp_path: Path, threads: int = 1) -> str:
    """Run `frontier finetune` (its launch: section starts the ranks) into tmp_path/two; its stderr."""
    params_file = dump_resolved(params, tmp_path / "p")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "frontier", "finetune", "--params", str(params_file), "--model", str(base), "--data",
         str(sft), "--out", str(tmp_path / "two"), "--checkpoints", str(tmp_path / "ckpt_two")],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def assert_same_losses(one: Path, two: Path, steps: int = 6) -> None:
    """Two runs' per-step training losses (plots/train.csv of the output dirs) agree to 1e-5, step for step."""
    a_rows, b_rows = read_rows(one / "plots" / "train.csv"), read_rows(two / "plots" / "train.csv")
    assert [r["step"] for r in b_rows] == [r["step"] for r in a_rows] == [float(s) for s in range(1, steps + 1)]
    for a, b in zip(a_rows, b_rows):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a_rows, b_rows)
