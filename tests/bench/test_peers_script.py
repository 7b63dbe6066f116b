"""bench/peers.py runs end to end in its --quick rehearsal: real Frontier, Trainer and nanoGPT processes.

Checks the report's structure and that every ratio and verdict is computed from the figures measured
in the same call; the figures themselves (a few steps on a shared machine) are never asserted.
The nanoGPT row runs when a nanoGPT checkout can be had without the network: NANOGPT_DIR, or the
local mirror beside this checkout (../.mirror/karpathy+nanoGPT/repo); else it must be skipped, saying how.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
MIRROR = REPO.parent / ".mirror" / "karpathy+nanoGPT" / "repo"


def _load(name: str) -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the file the way `python bench/<name>.py` runs it
    # (its folder on sys.path, where its sibling modules are imported from)
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def _nanogpt(tmp: Path) -> Path | None:
    if os.environ.get("NANOGPT_DIR"):
        return Path(os.environ["NANOGPT_DIR"])
    if not MIRROR.is_dir():
        return None
    checkout = tmp / "nanogpt"
    checkout.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(MIRROR), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    return checkout


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)


@pytest.mark.slow
def test_quick_mode_measures_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    peers = _load("peers")
    if not peers.SHAKESPEARE.is_file():
        pytest.skip(f"{peers.SHAKESPEARE} (shared data) is not here")
    nanogpt = _nanogpt(tmp_path)
    args = ["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    if nanogpt:
        args += ["--nanogpt", str(nanogpt)]
    assert peers.main(args) == 0
    printed = capsys.readouterr().out

    [json_file] = (tmp_path / "out").glob("peers-quick-*.json")
    assert json_file.with_suffix(".md").is_file()
    report = json.loads(json_file.read_text())
    assert set(report) == {"meta", "settings", "results", "table"}
    meta = report["meta"]
    for key in ("cpu_model", "cpu_count", "torch", "transformers", "date_utc", "threads", "git_commit"):
        assert meta[key], key
    res, rows = report["results"], {r["row"].split(" (")[0]: r for r in report["table"]}
    assert len(rows) == len(report["table"]) == 4

    # shakespeare_char, 1 thread in both processes
    sh = res["shakespeare"]
    fr = sh["frontier"]
    one_cpu = [min(os.sched_getaffinity(0))] if hasattr(os, "sched_setaffinity") else None
    assert fr["torch_threads"] == 1 and fr["cpus"] == one_cpu and fr["steps"] == peers.QUICK_SHAKESPEARE["steps"]
    wall, val = rows["shakespeare_char whole run wall s, 1 thread"], rows["shakespeare_char best val loss"]
    assert wall["frontier"] == fr["wall_s"] > 0 and val["frontier"] == fr["best_val_loss"]
    assert val["met"] == (fr["best_val_loss"] <= peers.TARGET_VAL)
    if nanogpt:
        nano = sh["nanogpt"]
        assert nano["torch_threads"] == 1 and nano["cpus"] == one_cpu and nano["set_num_threads_calls"] == []
        assert nano["iterations"] == peers.QUICK_SHAKESPEARE["steps"] + 1  # nanoGPT steps at iter 0..max_iters
        assert wall["peer"] == nano["wall_s"] == pytest.approx(nano["prepare_s"] + nano["train_process_s"])
        assert _close(wall["ratio"], fr["wall_s"] / nano["wall_s"])
        assert wall["met"] == (wall["ratio"] <= peers.TARGET_WALL_RATIO)
        assert _close(val["ratio"], fr["best_val_loss"] / nano["best_val_loss"])
        assert nano["best_val_loss"] == min(e["val_loss"] for e in nano["evals"])
        check = {c["setting"]: c for c in nano["config_check"]}
        assert check["n_embd / model.hidden_size"]["same"] and not check["bias (Linear and LayerNorm)"]["same"]
    else:
        assert sh["nanogpt"] is None and "--nanogpt" in sh["nanogpt_skipped"]
        assert wall["peer"] is None and wall["ratio"] is None and wall["met"] is None
        assert "--nanogpt" in wall["note"]

    # Llama default, 2 threads: tokens/s from the step stamps, ratio from the medians
    for key, name in (("llama", "eager"), ("llama_compiled", "compiled")):
        row = rows[f"Llama default tokens/s, 2 threads, {name}"]
        pair = res[key]
        for side in [s for s in ("frontier", "hf") if s in pair]:
            runs = pair[side]["runs"]
            for run in runs:
                assert run["torch_threads"] == 2 and run["omp_num_threads"] == "2"
                assert run["compile"] == (key == "llama_compiled")
                assert run["timed_steps"] == peers.QUICK_LLAMA["steps"]
                profiled = 1 if run is runs[0] else 0  # --quick profiles one step, in each side's first process
                assert run["total_steps"] == peers.QUICK_LLAMA["warmup"] + peers.QUICK_LLAMA["steps"] + profiled + 1
                prof = run["profile"]
                if profiled:  # one step after the timed ones, its ops with their self time
                    assert prof["steps"] == prof["optimizer_steps_seen"] == 1 and prof["self_ms_per_step"] > 0
                    assert 0 < prof["matmul_share"] < 1 and 0 <= prof["attention_share"] < 1
                    assert any(o["op"] == "aten::mm" for o in prof["top"])
                    assert sum(o["share"] for o in prof["top"]) <= 1 + 1e-9
                else:
                    assert prof is None
                assert _close(run["tokens_per_s"], run["timed_steps"] * run["step_tokens"] / run["timed_seconds"])
            assert pair[side]["tokens_per_s"] == statistics.median(r["tokens_per_s"] for r in runs)
        hf_run = pair["hf"]["runs"][0]
        assert hf_run["attn_implementation"] == "sdpa" and hf_run["step_tokens"] == 16 * 128
        assert row["peer"] == pair["hf"]["tokens_per_s"]
        if "unavailable" in pair:  # Frontier's engine.compile is not in this checkout
            assert row["frontier"] is None and row["ratio"] is None and "engine.compile" in row["note"]
            continue
        assert pair["frontier"]["runs"][0]["params"] == hf_run["params"]  # the same model on both sides
        assert row["frontier"] == pair["frontier"]["tokens_per_s"]
        assert _close(row["ratio"], row["frontier"] / row["peer"])
        assert row["met"] == (row["ratio"] >= peers.TARGET_TPS_RATIO)

    for r in report["table"]:
        assert r["row"] in printed
    md = json_file.with_suffix(".md").read_text()
    assert "| row | Frontier | peer | ratio | target | met? |" in md
    assert "## Where a step's time goes" in md and "- llama hf: " in md and "matmuls " in md


def test_table_marks_missing_figures_not_available() -> None:
    peers = _load("peers")
    results = {
        "shakespeare": {"frontier": {"wall_s": 10.0, "best_val_loss": 1.8}, "nanogpt": None,
                        "nanogpt_skipped": "no checkout"},
        "llama_compiled": {"hf": {"tokens_per_s": 100.0, "runs": []}, "unavailable": "Frontier compiled: why"},
        "llama": {"frontier": {"tokens_per_s": 260.0, "runs": []}, "hf": {"tokens_per_s": 200.0, "runs": []}},
    }  # fmt: skip
    rows = peers.table(results)
    assert [(r["frontier"], r["peer"], r["ratio"], r["met"]) for r in rows] == [
        (10.0, None, None, None),
        (1.8, None, None, True),  # the val target is Frontier's own figure
        (260.0, 200.0, 1.3, True),
        (None, 100.0, None, None),
    ]
    text = peers.format_table(rows)
    assert (
        text.count("not available") == 3 + 2 + 0 + 3
    )  # peer, ratio, met? of the rows without a figure and len(text.splitlines()) == 2 + len(rows)
    assert peers.notes(rows) == [
        f"{rows[0]['row']}: no checkout",
        f"{rows[1]['row']}: no checkout",
        f"{rows[3]['row']}: Frontier compiled: why",
    ]


def test_a_folder_that_is_not_nanogpt_is_named_with_what_is_missing(tmp_path: Path) -> None:
    nano = _load("peers_nanogpt")
    reason = nano.missing(tmp_path)
    assert reason is not None and str(tmp_path) in reason and "train.py" in reason and "git" in reason
    with pytest.raises(FileNotFoundError, match="not a nanoGPT checkout"):
        nano.run(tmp_path, tmp_path / "x.txt", tmp_path / "work", {}, quick=None)


def test_tokens_per_s_needs_a_warm_up_and_enough_stamps() -> None:
    llama = _load("peers_llama")
    stamps = [1.0, 2.0, 2.5, 3.0]  # ends of steps 1..4
    assert llama.tokens_per_s(stamps, 1, 3, 100) == 300 / 2.0
    assert llama.tokens_per_s(stamps, 2, 2, 100) == 200 / 1.0
    with pytest.raises(ValueError, match="warm-up"):
        llama.tokens_per_s(stamps, 0, 3, 100)
    with pytest.raises(ValueError, match="need 5"):
        llama.tokens_per_s(stamps, 2, 3, 100)


def test_a_measured_process_inherits_no_rank_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # init_distributed, run earlier in this process (as other tests do), leaves RANK/WORLD_SIZE behind:
    # a measured child must not take itself for one of several ranks
    proc = _load("peers_proc")
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.1",
                       "MASTER_PORT": "29500", "LOCAL_WORLD_SIZE": "2"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    env = proc.child_env(2)
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"} & set(env)
    assert (env["OMP_NUM_THREADS"], env["DS_ACCELERATOR"]) == ("2", "cpu")
    assert os.environ["RANK"] == "0"  # this process's own environment is left alone


def test_config_check_sees_the_same_exact_gelu_on_both_sides(tmp_path: Path) -> None:
    # what nanoGPT's checkpoint recorded in the committed peers run, against configs/shakespeare_char.yaml
    nanogpt = _load("peers_nanogpt")
    from frontier.config import load_params

    report = json.loads((REPO / "bench" / "results" / "peers-2026-11-30.json").read_text())
    recorded = report["results"]["shakespeare"]["nanogpt"]["recorded"]
    (tmp_path / "model.py").write_text("class MLP:\n    def __init__(self):\n        self.gelu = nn.GELU()\n")
    params = load_params(REPO / "configs" / "shakespeare_char.yaml")
    rows = {r["setting"]: r for r in nanogpt.compare_config(recorded, params, tmp_path)}
    act = rows["MLP activation (transformers' ACT2FN name)"]
    assert (act["nanogpt"], act["frontier"], act["same"]) == ("gelu", "gelu", True)
    tanh = nanogpt.compare_config(recorded, load_params(REPO / "configs" / "shakespeare_char.yaml",
                                                        ["model.mlp_activation=gelu_tanh"]), tmp_path)  # fmt: skip
    assert {r["setting"]: r for r in tanh}["MLP activation (transformers' ACT2FN name)"]["same"] is False
    assert rows["bias (Linear and LayerNorm)"]["same"] is False  # the one difference left
