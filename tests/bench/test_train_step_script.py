"""bench/train_step.py keeps running: its entry function on a tiny model, 2 steps per variant.

Checks the report's structure only; timings on a shared CI machine mean nothing and are never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.max_seq_len=16",
    "train.seq_len=16",
    "train.micro_batch_size=2",
    "train.log_every=2",
]


def _load() -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the file the way `python bench/train_step.py` runs it
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "bench" / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def test_entry_function_reports_every_variant(tmp_path: Path) -> None:
    bench = _load()
    report = bench.run(
        ["llama_default", "shakespeare_char"], [1], steps=2, rounds=2, warmup=1, overrides=TINY,
        profile=True, profile_top=5, profile_steps=1,
    )  # fmt: skip
    assert set(report) == {"meta", "results", "profiles", "probes"}
    rows = report["results"]
    assert [(r["config"], r["variant"]) for r in rows] == [
        (c, v) for c in ("llama_default", "shakespeare_char") for v in bench.VARIANTS
    ]
    for r in rows:
        assert r["threads"] == 1 and r["n_steps"] == 4  # 2 rounds x 2 steps
        assert r["median_ms"] > 0 and r["tokens_per_s"] > 0 and r["ratio_to_bare"] > 0
        assert r["tokens_per_step"] == 2 * 16
    assert {r["ratio_to_bare"] for r in rows if r["variant"] == "bare"} == {1.0}
    for r in rows:  # host reads over one log window (2 steps), apart from the model's own (transformers' masks)
        own = sum(n for where, n in r["host_reads"].items() if "transformers/masking_utils.py" not in where)
        assert own == (0 if r["variant"] == "bare" else 1), r["host_reads"]  # frontier: the step log, once
        assert r["host_reads_per_step"] == sum(r["host_reads"].values()) / 2
    assert [p["config"] for p in report["profiles"]] == ["llama_default", "shakespeare_char"]
    for p in report["profiles"]:
        assert set(p["per_variant_self_ms"]) == set(bench.VARIANTS)
        for variant in ("frontier", "ds_torch_adamw"):
            for kind in ("ops", "python"):
                for row in p[f"{variant}_{kind}"]:
                    assert row["extra_ms"] > 0 and row["calls"] > row["bare_calls"]
    assert [p["config"] for p in report["probes"]] == ["llama_default", "shakespeare_char"]
    for p in report["probes"]:
        assert p["ms"] and all(ms >= 0 for ms in p["ms"].values())
    table = bench.format_table(report)
    assert table.count("\n") == 1 + len(rows)  # header, rule, one line per row
    bench.format_profiles(report)
    json.dumps(report)  # what --json writes


def test_cli_writes_json(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "r.json"
    args = ["--configs", "shakespeare_char", "--threads", "1", "--steps", "1", "--rounds", "1", "--warmup", "0",
            "--variants", "bare", "frontier", "--no-profile", "--json", str(out)]  # fmt: skip
    for item in TINY:
        args += ["--set", item]
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == ["bare", "frontier"] and report["profiles"] == report[
        "probes"
    ] == []


def test_auto_micro_batch_is_refused_with_the_key_named() -> None:
    bench = _load()
    auto = [*TINY, "train.micro_batch_size=auto", "train.global_batch_size=4"]
    with pytest.raises(SystemExit, match=r"train\.micro_batch_size: auto: this benchmark times a fixed micro-batch"):
        bench.load_case("llama_default", auto)
    assert bench.load_case("llama_default", TINY).micro_batch == 2
