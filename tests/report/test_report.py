"""The report: its content, its escaping, and that a real browser decodes its plots."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from frontier.config import load_params
from frontier.errors import DataError
from frontier.report.build import build_report
from frontier.report.plots import ema

HOSTILE = "<script>document.title='pwned'</script>"
TRAINER = "trainer-node-7"  # the training machine's hostname, as its provenance record names it


def _write_run(root: Path) -> tuple[Path, Path, Path]:
    train, ev, ft = root / "train", root / "eval", root / "finetune"
    (train / "plots").mkdir(parents=True)
    steps = np.arange(1, 201)
    loss = 6.0 * np.exp(-steps / 60) + 1.5 + 0.05 * np.sin(steps)
    rows = ["step,loss,lr,grad_norm,tokens_per_s"] + [f"{s},{v:.5f},0.001,1.0,1000" for s, v in zip(steps, loss)]
    (train / "plots" / "train.csv").write_text("\n".join(rows) + "\n201,nan,0.001,1.0,1000\n")
    (train / "plots" / "val.csv").write_text("step,val_loss\n50,3.4\n100,2.5\n150,2.0\n200,1.9\n")
    (train / "metrics.json").write_text(json.dumps({"final_loss": 1.55, "steps": 200, "tokens": 819200}))
    (train / "speed.json").write_text(json.dumps({"tokens_per_s": 4321.5}))
    provenance = {"hostname": TRAINER, "git": {"commit": "c0ffee", "dirty": False}, "packages": {"torch": "9.9.9"}}
    (train / "provenance.json").write_text(json.dumps(provenance))
    ev.mkdir()
    metrics = {
        "val_loss": 1.9,
        "perplexity": 6.686,
        "bits_per_byte": 0.812,
        "unigram_bits_per_byte": 2.31,
        "bpb_vs_unigram": 0.6485,
        "tokens_evaluated": 12345,
        "bytes_estimated": False,
        "per_source": {
            "stdlib": {"docs": 3, "tokens_evaluated": 900, "bytes": 4000, "loss": 1.8, "bits_per_byte": 0.58}
        },
    }
    (ev / "metrics.json").write_text(json.dumps(metrics))
    samples = [
        {"prompt": "def fib(n):\n", "mode": "greedy", "completion": "    return n", "seed": 1, "temperature": 0.0},
        {"prompt": "x = ", "mode": "sample", "completion": HOSTILE, "seed": 1, "temperature": 0.8, "top_p": 0.95},
    ]
    (ev / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (ft / "plots").mkdir(parents=True)
    (ft / "metrics.json").write_text(
        json.dumps({"base_heldout_loss": 3.2, "finetuned_heldout_loss": 2.7, "method": "lora"})
    )
    (ft / "plots" / "train.csv").write_text("step,loss\n1,3.3\n2,3.1\n3,2.9\n4,2.8\n")
    (ft / "plots" / "val.csv").write_text("step,val_loss\n2,3.15\n4,2.7\n")
    return train, ev, ft


@pytest.fixture()
def report(tmp_path):
    train, ev, ft = _write_run(tmp_path)
    params = load_params(None, ["report.title=Test run <1>"])
    path = build_report(params, train, ev, tmp_path / "report", ft)
    return path, path.read_text(encoding="utf-8")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_holds_metrics_samples_config_and_system(report):
    path, text = report
    assert path.name == "report.html" and (path.parent / "loss.png").is_file()
    assert "Test run &lt;1&gt;" in text
    assert "0.8120" in text and "64.8%" in text  # bits per byte and the saving vs unigram
    assert "stdlib" in text and "fine-tuned (lora)" in text and "-0.5000" in text
    assert "def fib(n):" in text
    assert "evaluate:" in text and "passk:" in text  # the resolved configuration
    assert "4321.5" in text  # speed.json beside the training metrics
    # the training machine's environment (its provenance record), not the machine rendering the report
    assert "Training machine and environment" in text
    assert TRAINER in text and "git.commit" in text and "c0ffee" in text and "9.9.9" in text
    import torch

    assert torch.__version__ not in text  # the renderer's own torch would show up if it reported itself


def _write_preference(root: Path, ev: Path) -> tuple[Path, Path, Path]:
    """A preference stage's output and the evaluate outputs of the fine-tuned and the preference-tuned model."""
    pref = root / "preference"
    (pref / "plots").mkdir(parents=True)
    before = {"loss": 0.6931, "accuracy": 0.5, "margins": 0.0, "rewards_chosen": 0.0, "rewards_rejected": 0.0}
    after = {"loss": 0.4242, "accuracy": 0.875, "margins": 0.61, "rewards_chosen": 0.2, "rewards_rejected": -0.41}
    metrics = {"loss_kind": "dpo", "steps": 4, **{f"base_heldout_{k}": v for k, v in before.items()},
               **{f"tuned_heldout_{k}": v for k, v in after.items()}}  # fmt: skip
    (pref / "metrics.json").write_text(json.dumps(metrics))
    (pref / "plots" / "train.csv").write_text("step,loss\n1,0.69\n2,0.6\n3,0.5\n4,0.45\n")
    (pref / "plots" / "preference.csv").write_text(
        "step,loss,rewards_chosen,rewards_rejected,margins,accuracy\n1,0.69,0.0,0.0,0.0,0.5\n4,0.45,0.2,-0.4,0.6,0.9\n"
    )
    evals = []
    for name, loss in (("eval_ft", 1.7), ("eval_pref", 1.65)):
        d = root / name
        d.mkdir()
        m = json.loads((ev / "metrics.json").read_text())
        m["val_loss"] = loss
        (d / "metrics.json").write_text(json.dumps(m))
        evals.append(d)
    return pref, evals[0], evals[1]


def test_report_compares_pretrained_fine_tuned_and_preference_tuned(tmp_path):
    train, ev, ft = _write_run(tmp_path)
    pref, ev_ft, ev_pref = _write_preference(tmp_path, ev)
    path = build_report(load_params(None), train, ev, tmp_path / "out", ft, ev_ft, pref, ev_pref)
    text = path.read_text()
    assert "Preference tuning" in text and "held-out pairs (DPO)" in text
    # accuracy 0.5 -> 0.875 is better; the loss fell, also better; both changes shown
    assert '<span class="better">0.3750</span>' in text and '<span class="better">-0.2689</span>' in text
    assert "Pretrained vs fine-tuned vs preference-tuned on val" in text
    compared = text.split("Pretrained vs fine-tuned vs preference-tuned on val", 1)[1]
    row = re.search(r"<tr><td>val loss \(nats/token\)</td>(.*?)</tr>", compared).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row) == ["1.9000", "1.7000", "1.6500"]
    assert len(re.findall(r"<img ", text)) == 5  # + the preference loss and its rewards
    # without its evaluation the preference run still has its section; the comparison keeps the two it has
    text = build_report(load_params(None), train, ev, tmp_path / "two", ft, ev_ft, pref).read_text()
    assert "Preference tuning" in text and "Pretrained vs fine-tuned on val" in text
    (pref / "metrics.json").unlink()
    with pytest.raises(DataError, match="preference/metrics.json"):
        build_report(load_params(None), train, ev, tmp_path / "three", ft, ev_ft, pref, ev_pref)
    assert not (tmp_path / "three").exists()


def test_report_of_a_run_without_provenance_says_so(tmp_path):
    train, ev, _ = _write_run(tmp_path)
    (train / "provenance.json").unlink()
    path = build_report(load_params(None), train, ev, tmp_path / "out")
    assert "none recorded" in path.read_text()


def test_untrusted_text_is_escaped(report):
    _, text = report
    assert HOSTILE not in text
    assert "&lt;script&gt;" in text


def test_images_are_embedded_not_linked(report):
    path, text = report
    sources = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(sources) == 3  # training loss, training dynamics (lr, grad norm, tokens/s), fine-tune loss
    assert "Training dynamics" in text
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = base64.b64decode(sources[0].split(",", 1)[1])
    assert embedded == (path.parent / "loss.png").read_bytes()


def test_loss_plot_draws_both_curves(report):
    from matplotlib.image import imread

    path, _ = report
    pixels = (imread(path.parent / "loss.png")[..., :3] * 255).round().astype(int)  # (H, W, 3)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(rgb)).sum(-1) < 30).sum())

    assert count((0x08, 0x51, 0x9C)) > 200  # smoothed train curve
    assert count((0xE6, 0x55, 0x0D)) > 50  # val curve and markers


def test_ema_is_bias_corrected():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 0.75 * 2) / 0.75 * 1.0])
    assert ema([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_missing_inputs_are_named(tmp_path):
    train, ev, _ = _write_run(tmp_path)
    (ev / "metrics.json").unlink()
    with pytest.raises(DataError, match="eval/metrics.json"):
        build_report(load_params(None), train, ev, tmp_path / "out")
    (train / "plots" / "train.csv").write_text("step,wrong\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        build_report(load_params(None), train, ev, tmp_path / "out")
    assert not (tmp_path / "out").exists()


_PROBE = """
<script>
window.addEventListener('load', () => {  // fires once every image has loaded (or failed)
  const imgs = Array.from(document.images);
  const probe = imgs.map(i => ({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}));
  document.body.setAttribute('data-probe', JSON.stringify(probe));
  document.body.setAttribute('data-title', document.title);
});
</script>
"""


def test_headless_chromium_decodes_the_plots(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    path, text = report
    probed = tmp_path / "probed.html"  # the report plus a probe script; the report itself stays script-free
    probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match, f"no probe result in the DOM (rc={done.returncode}): {done.stdout[:300]} {done.stderr[-300:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    width, height = _png_size((path.parent / "loss.png").read_bytes())
    assert len(probe) == 3 and all(p["ok"] for p in probe)
    assert (probe[0]["w"], probe[0]["h"]) == (width, height)
    assert probe[1]["w"] > 0 and probe[1]["h"] > 0
    assert 'data-title="Test run &lt;1&gt;"' in done.stdout  # the hostile sample did not run


def test_report_from_real_stage_outputs(tmp_path):
    """The train stage's and evaluate stage's actual files (not hand-written ones) make a report."""
    from frontier.eval.evaluate import evaluate
    from tests.eval.tiny import TRAIN_OVERRIDES, trained_run

    run = trained_run()
    params = load_params(
        None,
        [
            *TRAIN_OVERRIDES,
            "evaluate.samples_per_prompt=1",
            "evaluate.sampling.max_new_tokens=8",
            "evaluate.passk.in_evaluate=false",
        ],  # the harness's example task scores; pass@k has its own tests
    )
    metrics = evaluate(params, run["out"] / "model", run["tokens"], tmp_path / "eval")
    path = build_report(params, run["out"], tmp_path / "eval", tmp_path / "report")
    text = path.read_text(encoding="utf-8")
    assert f"{metrics['bits_per_byte']:.4f}" in text
    assert text.count("<img ") == 3 and "Configuration of the training run" in text  # loss, dynamics, scores
    assert "frontier_python_syntax acc" in text  # the example task's score, as the evaluate stage wrote it
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * len(params.evaluate.prompts)
    from html import escape

    assert escape(samples[0]["completion"]) in text
