"""pass@k: the estimator, the problem reader, the harness on known completions, the stage end to end."""

from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path

import pytest

from frontier.config import load_params
from frontier.errors import DataError
from frontier.eval.passk import (
    execute_completions,
    load_problems,
    pass_at_k,
    run_passk,
    summarize,
)
from frontier.eval.sandbox import SandboxLimits, isolation
from tests.eval.tiny import save_model_dir

PROBLEMS = Path(__file__).with_name("problems.jsonl")
LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=3, memory_mb=512)
needs_sandbox = pytest.mark.skipif(
    not isolation()["sandbox"], reason=f"no sandbox on this machine: {isolation().get('why')}"
)


def _enumerated_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: the fraction of k-subsets of the n samples holding at least one correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (7, 3, 2), (8, 8, 4), (6, 5, 2), (10, 1, 10)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_enumerated_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    exact = 1 - comb(150, 100) / comb(200, 100)  # integers: exact up to the final division
    assert pass_at_k(200, 50, 100) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_load_problems_reads_the_humaneval_fields():
    problems = load_problems(PROBLEMS)
    assert [p.task_id for p in problems] == ["Frontier/0", "Frontier/1", "Frontier/2"]
    assert load_problems(PROBLEMS, max_problems=2)[-1].entry_point == "is_palindrome"


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", ":1: not valid JSON"),
        ('{"task_id": "a", "prompt": "p", "test": "t"}', "entry_point"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_problems_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        load_problems(path)


def test_load_problems_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_problems(tmp_path / "nope.jsonl")


@needs_sandbox
def test_canonical_solutions_pass_and_known_wrong_completions_fail():
    problems = load_problems(PROBLEMS)
    by_id = {p.task_id: p for p in problems}
    completions = {
        "Frontier/0": [
            by_id["Frontier/0"].canonical_solution,
            "    return a - b\n",  # wrong answer
            "    while True:\n        pass\n",  # never returns
            "    return a +\n",  # syntax error
        ],
        "Frontier/1": [
            by_id["Frontier/1"].canonical_solution,
            "    return True\n",  # wrong on 'ab'
            "    x = []\n    while True:\n        x.append(bytearray(1 << 24))\n",  # unbounded memory
            "    open('/tmp/frontier-passk-escape', 'w').write('x')\n    return text == text[::-1]\n",
        ],
        "Frontier/2": [
            by_id["Frontier/2"].canonical_solution,
            "    import os\n    os._exit(0)\n",  # exits 0 before the tests run
            "    return len([c for c in s.lower() if c in 'aeiou'])\n",  # a different correct solution
            "    import os\n    while True:\n        os.fork()\n",
        ],
    }
    results = execute_completions(problems, completions, LIMITS, workers=2)
    statuses = {task: [r.status for r in rs] for task, rs in results.items()}
    assert statuses == {
        "Frontier/0": ["passed", "failed", "timeout", "failed"],
        "Frontier/1": ["passed", "failed", "failed", "failed"],
        "Frontier/2": ["passed", "failed", "passed", "failed"],
    }
    summary = summarize(results, [1, 2])
    expected_1 = (1 / 4 + 1 / 4 + 2 / 4) / 3
    expected_2 = (pass_at_k(4, 1, 2) * 2 + pass_at_k(4, 2, 2)) / 3
    assert summary["pass@1"] == pytest.approx(expected_1)
    assert summary["pass@2"] == pytest.approx(expected_2)
    assert summary["completions_passed"] == 4 and summary["completions_timeout"] == 1
    assert not Path("/tmp/frontier-passk-escape").exists()


@needs_sandbox
def test_summarize_requires_k_samples_per_problem():
    results = execute_completions(load_problems(PROBLEMS, 1), {"Frontier/0": ["    return a + b\n"]}, LIMITS)
    with pytest.raises(ValueError, match="at least 2"):
        summarize(results, [2])


@needs_sandbox
def test_run_passk_stage_end_to_end(tmp_path):
    model_dir = save_model_dir(tmp_path / "model")
    params = load_params(
        None,
        [
            "evaluate.passk.n=3",
            "evaluate.passk.k=[1,3]",
            "evaluate.passk.max_problems=2",
            "evaluate.passk.sampling.max_new_tokens=6",
            "evaluate.passk.timeout_s=3",
        ],
    )
    out = tmp_path / "passk"
    metrics = run_passk(params, model_dir, out, PROBLEMS)
    saved = json.loads((out / "passk.json").read_text())
    assert saved == metrics
    assert metrics["problems"] == 2 and metrics["completions"] == 6 and metrics["n"] == 3
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in records] == ["Frontier/0"] * 3 + ["Frontier/1"] * 3
    passed = sum(r["status"] == "passed" for r in records)
    assert metrics["completions_passed"] == passed
    # a random tiny model cannot solve these; pass@k then equals the per-problem mean of the counts
    assert 0.0 <= metrics["pass@1"] <= metrics["pass@3"] <= 1.0
    assert (out / "params.resolved.yaml").is_file()
    # seeded: the same parameters draw the same completions
    again = run_passk(params, model_dir, tmp_path / "passk2", PROBLEMS)
    assert again["completions"] == metrics["completions"]
    second = [json.loads(line) for line in (tmp_path / "passk2" / "completions.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in second] == [r["completion"] for r in records]
