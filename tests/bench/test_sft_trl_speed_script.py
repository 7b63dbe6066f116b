"""bench/sft_trl_speed.py runs end to end at its --quick toy size: Frontier's finetune stage with packing and TRL's
SFTTrainer(packing=True), each in its own process on the same chats.

Checks that the report holds both sides, measured on the same chats with 2 threads each, and that the ratio is
computed from those figures; the figures themselves (a few toy steps) are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.quick_run import run_quick

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "sft_trl_speed.py"


@pytest.mark.slow
def test_quick_run_reports_both_sides_and_their_ratio(tmp_path: Path) -> None:
    report, json_file, printed = run_quick(SCRIPT, tmp_path, "sft-trl-speed-quick-*.json")
    settings, summary = report["settings"], report["summary"]
    pair = report["results"]["sft_packing"]
    assert set(pair) == {"frontier", "trl"}
    sides = [pair["frontier"]["runs"][0], pair["trl"]["runs"][0]]
    assert [s["side"] for s in sides] == ["frontier", "trl"]
    assert sides[0]["epoch_tokens"] == sides[1]["epoch_tokens"] > 0  # the same chats on both sides
    for run in sides:
        assert run["torch_threads"] == 2 and run["omp_num_threads"] == "2"
        assert run["timed_steps"] == settings["steps"] and run["tokens_per_s"] > 0
    ratio = pair["frontier"]["tokens_per_s"] / pair["trl"]["tokens_per_s"]
    assert summary["ratio"] == pytest.approx(ratio)
    md = json_file.with_suffix(".md").read_text()
    assert "--quick rehearsal" in md and "Frontier / TRL tokens/s" in md
