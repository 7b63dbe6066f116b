"""What the train stage leaves behind: out_dir layout, metrics, plots, TensorBoard, profiler, HF export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from frontier.model.loss import CausalLMWithLoss
from frontier.train.checkpoint.engine_io import weights_only_loads
from frontier.train.run import train
from frontier.utils.metrics_files import METRIC_FILES, SPEED_KEYS
from tests.train.helpers import params, read_rows


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("outputs")
    p = params(
        "train.max_steps=8", "train.log_every=2", "train.eval_every=4", "train.eval_batches=2",
        "engine.monitor.system_every_s=0.05", "engine.monitor.tensorboard=true", "train.profile.start_step=2",
        "train.profile.num_steps=2", "engine.alerts.grad_norm_max=1e-6", "engine.alerts.warmup_steps=0",
    )  # fmt: skip
    metrics = train(p, corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root, metrics


def test_out_dir_layout_and_metrics(run):
    root, metrics = run
    out = root / "out"
    for rel in ("model/config.json", "model/model.safetensors", "model/generation_config.json",
                "model/tokenizer.json", "metrics.json", "plots/train.csv", "plots/val.csv", "alerts.jsonl",
                "params.resolved.yaml", "profile/trace_rank00000.json"):  # fmt: skip
        assert (out / rel).is_file(), rel
    results, speed, run = (json.loads((out / name).read_text()) for name in METRIC_FILES)
    assert {**results, **speed, **run} == metrics and set(speed) == set(SPEED_KEYS)
    assert all(v is None or type(v) in (int, float) for v in results.values())  # DVC's metrics: numbers only
    assert run["stop_reason"] == "max_steps" and run["device"] == "cpu"
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["packages"]["torch"] == torch.__version__ and provenance["hardware"]["cpus"] == os.cpu_count()
    assert metrics["steps"] == 8 and metrics["tokens"] == 8 * 4 * 16
    assert metrics["mfu"] is None and metrics["flops_per_s"] > 0  # no peak for a CPU: achieved FLOP/s only
    assert metrics["params"] == sum(p.numel() for p in torch.nn.Module.parameters(_model(out)))
    assert metrics["best_val_loss"] == min(r["val_loss"] for r in read_rows(out / "plots" / "val.csv"))
    assert [int(r["step"]) for r in read_rows(out / "plots" / "train.csv")] == [2, 4, 6, 8]
    assert [int(r["step"]) for r in read_rows(out / "plots" / "val.csv")] == [4, 8]
    resolved = yaml.safe_load((out / "params.resolved.yaml").read_text())
    assert resolved["train"]["max_steps"] == 8
    assert not list(root.glob(".out.tmp*"))  # the atomic temporary is gone


def _model(out):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out / "model"), local_files_only=True)


def test_tensorboard_scalars(run):
    root, _ = run
    acc = EventAccumulator(str(root / "out" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/flops_per_s", "val/loss",
            "system/cpu_pct", "system/ram_pct", "system/rss_gb"} <= tags  # fmt: skip
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]


def test_alert_rules_fire_into_alerts_jsonl(run):
    root, _ = run
    alerts = [json.loads(line) for line in (root / "out" / "alerts.jsonl").read_text().splitlines()]
    grad = [a for a in alerts if a["rule"] == "grad_norm"]
    assert [a["step"] for a in grad] == list(range(1, 9))  # the threshold is below every grad norm
    assert all(a["threshold"] == 1e-6 and a["value"] > 1e-6 for a in grad)


def test_exported_model_loads_with_transformers_alone_and_matches(run, corpus):
    root, _ = run
    model_dir = root / "out" / "model"
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained({str(model_dir)!r}, local_files_only=True)
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        with torch.no_grad():
            logits = model(ids).logits[0, -1, :8].tolist()
        assert not any(m == "frontier" or m.startswith("frontier.") for m in sys.modules), "frontier was imported"
        print(json.dumps({{"logits": logits, "eos": tok.eos_token_id, "type": type(model).__name__}}))
    """)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(root), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["type"] == "LlamaForCausalLM" and result["eos"] == 2

    # the export holds the trained weights: the final checkpoint's module state gives the same logits
    lm = _model(root / "out")
    with weights_only_loads():
        state = torch.load(next((root / "ckpt").glob("step_00000008/ds/state/mp_rank_00_model_states.pt")),
                           map_location="cpu", weights_only=True)["module"]  # fmt: skip
    trained = {k.removeprefix("lm."): v for k, v in state.items()}
    exported = dict(lm.named_parameters())
    assert set(exported) <= set(trained)
    assert all(torch.equal(exported[k], trained[k]) for k in exported)
    with torch.no_grad():
        expected = CausalLMWithLoss(lm).eval().lm(torch.tensor([[5, 6, 7, 8, 9, 10]])).logits[0, -1, :8]
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=1e-5, atol=1e-5)


def test_log_lines_say_how_long_is_left(tmp_path, corpus, caplog):
    with caplog.at_level("INFO", logger="frontier.train"):
        train(params("train.log_every=2"), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ") and "loss" in r.getMessage()]
    assert len(steps) == 3 and all(" | ETA " in line for line in steps), steps
    assert steps[-1].split(" | ETA ")[1].startswith("0:00:00")  # the last step: nothing left
