"""bench/continued_pretraining.py runs end to end at its --quick toy size: a Qwen2-shape checkpoint, the
continued-pretraining data flow, Frontier's train stage and transformers.Trainer in their own processes.

Checks that the report holds both sides, measured on the same model and batch with 2 threads each, and that
the ratio is computed from those figures; the figures themselves (a few toy steps) are never asserted.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.quick_run import run_quick

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "continued_pretraining.py"


def _script() -> ModuleType:
    # bench/ is a folder of scripts: load the file as `python bench/continued_pretraining.py` runs it
    spec = importlib.util.spec_from_file_location("continued_pretraining", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_reports_both_sides_and_their_ratio(tmp_path: Path) -> None:
    report, json_file, printed = run_quick(SCRIPT, tmp_path, "continued-pretraining-quick-*.json")
    settings, summary = report["settings"], report["summary"]
    pair = report["results"]["continued_pretraining"]
    assert set(pair) == {"frontier", "hf"}
    sides = [pair["frontier"]["runs"][0], pair["hf"]["runs"][0]]
    assert [s["side"] for s in sides] == ["frontier", "hf_trainer"]
    for run in sides:
        assert run["torch_threads"] == 2 and run["omp_num_threads"] == "2"
        assert run["step_tokens"] == settings["micro_batch"] * settings["grad_accum"] * settings["seq_len"]
        assert run["timed_steps"] == settings["steps"] and run["tokens_per_s"] > 0
    # the same checkpoint on both sides: Frontier's init_from and the Trainer's from_pretrained
    assert sides[0]["params"] == sides[1]["params"] == settings["parameters"]
    assert settings["model"]["family"] == "qwen2"
    assert any(o.startswith("model.init_from=") for o in settings["overrides"])

    f_tps, h_tps = pair["frontier"]["tokens_per_s"], pair["hf"]["tokens_per_s"]
    assert (summary["frontier_tokens_per_s"], summary["hf_tokens_per_s"]) == (f_tps, h_tps)
    assert summary["ratio"] == pytest.approx(f_tps / h_tps, rel=1e-12)
    assert summary["met"] == (summary["ratio"] >= 1.0)
    assert f"ratio {summary['ratio']:.3f}" in printed

    md = json_file.with_suffix(".md").read_text()
    assert "| Frontier (frontier.train.run.train) |" in md and "| transformers.Trainer |" in md
    assert f"**{summary['ratio']:.3f}**" in md and "--quick rehearsal" in md
    assert "continued_pretraining frontier: " in md and "continued_pretraining hf: " in md  # profiles


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps 0: expected at least 1"),
    (["--profile-steps", "-1"], "--profile-steps -1"),
    (["--seq-len", "4096"], "--seq-len 4096: the checkpoint's context is 1024"),
])  # fmt: skip
def test_bad_arguments_are_refused_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    cmd = [sys.executable, str(SCRIPT), *args, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("warmup", "steps", "profile_steps"), [(1, 2, 1), (2, 6, 1), (3, 10, 2), (20, 40, 0)])
def test_every_process_of_a_plan_loads_its_params(warmup: int, steps: int, profile_steps: int) -> None:
    # each side's first process runs the profiled steps too, the others do not: the lr warm-up that both
    # sides are given must fit the shorter run (params.yaml refuses a warm-up longer than max_steps)
    from frontier.config import load_params

    script = _script()
    plan = {**script.QUICK, "warmup": warmup, "steps": steps, "profile_steps": profile_steps}
    overrides = script.side_overrides(Path("/nowhere/checkpoint"), plan)
    for profiled in {profile_steps, 0}:
        params = load_params(script.PARAMS, [*overrides, f"train.max_steps={warmup + steps + profiled + 1}"])
        assert params.model.init_from == "/nowhere/checkpoint" and params.train.seq_len == plan["seq_len"]
        assert params.schedule.warmup_steps <= params.train.max_steps
