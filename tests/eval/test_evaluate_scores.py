"""The evaluate stage scores every model the same way: lm-eval tasks and pass@k on the model it loaded."""

from __future__ import annotations

import json

import pytest

import frontier.eval.sandbox as sandbox
from frontier.config import load_params
from frontier.eval.evaluate import evaluate
from frontier.eval.harness import EXAMPLE_TASK
from frontier.report.scores import score_keys, scores_section, scores_table
from frontier.utils.metrics_files import read_metrics
from tests.eval.test_evaluate import CONTEXT, workspace  # noqa: F401  (the module's fixture)
from tests.eval.test_passk import PROBLEMS, needs_sandbox


def _params(*overrides: str):
    return load_params(None, [
        "evaluate.batch_size=3", "evaluate.sampling.max_new_tokens=6", "evaluate.samples_per_prompt=0",
        f"evaluate.harness.tasks=[{EXAMPLE_TASK}]", f"evaluate.passk.problems={PROBLEMS}",
        "evaluate.passk.in_evaluate=true", "evaluate.passk.n=2", "evaluate.passk.k=[1,2]",
        "evaluate.passk.sampling.max_new_tokens=8", *overrides,
    ])  # fmt: skip


@needs_sandbox
def test_evaluate_scores_the_harness_task_and_passk(workspace, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    metrics = evaluate(_params(), workspace["model"], workspace["tokens"], out)
    files = read_metrics(out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["harness"][EXAMPLE_TASK]["samples"] == 60  # numbers: what `dvc metrics show` reads
    assert 0 <= on_disk["harness"][EXAMPLE_TASK]["acc"] <= 1
    assert on_disk["passk"]["problems"] == 3 and on_disk["passk"]["completions"] == 6
    assert set(on_disk["passk"]) >= {"pass@1", "pass@2", "n"}
    assert files["passk_set"]["set"]  # what set it was: run.json
    lines = (out / "passk_completions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {json.loads(x)["status"] for x in lines} <= {"passed", "failed", "timeout"}
    # the task as it ran, for lm_eval --include_path
    assert (out / "harness" / "tasks" / "python_syntax.yaml").is_file()
    assert metrics["harness"] == on_disk["harness"]


def test_without_a_sandbox_passk_is_skipped_and_says_why(workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sandbox, "isolation", lambda: {"sandbox": None, "why": "bwrap missing (test)"})
    out = tmp_path / "eval"
    evaluate(_params(), workspace["model"], workspace["tokens"], out)
    run = json.loads((out / "run.json").read_text())
    assert "bwrap missing (test)" in run["passk_skipped"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert "passk" not in on_disk and EXAMPLE_TASK in on_disk["harness"]
    assert not (out / "passk_completions.jsonl").exists()
    assert "pass@k skipped" in scores_table({"pretrained": read_metrics(out)})


def test_nothing_scored_when_both_are_off(workspace, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    evaluate(_params("evaluate.harness.tasks=[]", "evaluate.passk.in_evaluate=false"), workspace["model"],
             workspace["tokens"], out)  # fmt: skip
    on_disk = json.loads((out / "metrics.json").read_text())
    assert "harness" not in on_disk and "passk" not in on_disk
    assert not (out / "harness").exists()


def test_the_scores_table_puts_models_side_by_side():
    base = {"harness": {"t": {"acc": 0.25, "acc_stderr": 0.05, "acc_norm": 0.5, "samples": 60.0}},
            "passk": {"pass@1": 0.1, "pass@10": 0.3, "problems": 10, "n": 10}}  # fmt: skip
    tuned = {"harness": {"t": {"acc": 0.75, "acc_stderr": 0.04}}, "passk_skipped": "no bwrap"}
    keys = score_keys({"pretrained": base, "fine-tuned": tuned})
    assert [label for label, _ in keys] == ["t acc", "t acc_norm", "pass@1", "pass@10"]
    html = scores_section({"pretrained": base, "fine-tuned": tuned}, dpi=50)
    assert "0.250 ± 0.050" in html and "0.750 ± 0.040" in html and "—" in html
    assert "pass@k over 10 problems" in html and "fine-tuned: pass@k skipped: no bwrap" in html
    assert "<img" in html


@pytest.mark.parametrize("evals", [{}, {"pretrained": {}}])
def test_no_scores_is_said_not_drawn(evals):
    html = scores_section(evals, dpi=50)
    assert "No scores" in html and "<img" not in html
