"""pass@k on problems in HumanEval's JSONL format, executed in the sandbox.

Three separable steps, so tests can feed known completions straight to the executor:

1. `load_problems`: read ``{task_id, prompt, canonical_solution, test, entry_point}`` lines;
2. `generate_completions`: n sampled completions per problem from a model;
3. `execute_completions`: run each completion and the problem's ``check(entry_point)`` with
   `frontier.eval.sandbox.run_check` (two sandboxes: the verdict is the test's, never the completion's),
   then `summarize` with the unbiased estimator
   pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), averaged over problems.

No benchmark file ships with the project: the user passes the path of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frontier.config import Params
from frontier.errors import DataError
from frontier.eval.sandbox import ExecResult, SandboxLimits, describe, run_check
from frontier.utils.jsonl import iter_jsonl

log = logging.getLogger(__name__)

_FIELDS = ("task_id", "prompt", "test", "entry_point")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


def load_problems(path: Path, max_problems: int | None = None) -> list[Problem]:
    """Problems from a HumanEval-format JSONL file; DataError naming the line that is wrong."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for where, rec in iter_jsonl(path, "expected a HumanEval-format JSONL problems file"):
        missing = [k for k in _FIELDS if not isinstance(rec.get(k), str)]
        if missing:
            raise DataError(f"{where}: missing or non-string field(s) {', '.join(missing)}")
        if rec["task_id"] in seen:
            raise DataError(f"{where}: duplicate task_id {rec['task_id']!r}")
        seen.add(rec["task_id"])
        problems.append(
            Problem(rec["task_id"], rec["prompt"], rec["test"], rec["entry_point"], rec.get("canonical_solution") or "")
        )
        if max_problems is not None and len(problems) >= max_problems:
            break
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def execute_completions(
    problems: Sequence[Problem],
    completions: Mapping[str, Sequence[str]],
    limits: SandboxLimits = SandboxLimits(),
    workers: int = 1,
) -> dict[str, list[ExecResult]]:
    """Run every completion of every problem in the sandbox; results keep the completions' order."""
    jobs = [(p, i, c) for p in problems for i, c in enumerate(completions.get(p.task_id, ()))]
    results: dict[str, list[ExecResult | None]] = {
        p.task_id: [None] * len(completions.get(p.task_id, ())) for p in problems
    }

    def run(job: tuple[Problem, int, str]) -> tuple[str, int, ExecResult]:
        problem, i, completion = job
        return problem.task_id, i, run_check(problem.prompt, completion, problem.test, problem.entry_point, limits)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each job waits on a subprocess
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


def run_passk(params: Params, model_dir: Path, problems_path: Path, out_dir: Path) -> dict:
    """Stage: sample, execute, score; writes passk.json and completions.jsonl into `out_dir`."""
    from frontier.eval.model_io import load_model
    from frontier.provenance import record_stage
    from frontier.utils.atomic import atomic_dir, write_json

    cfg = params.evaluate.passk
    problems = load_problems(problems_path, cfg.max_problems)
    model, tokenizer = load_model(model_dir)
    completions = generate_completions(
        model, tokenizer, problems, n=cfg.n, sampling=cfg.sampling, stop=cfg.stop, seed=params.seed
    )
    results = execute_completions(problems, completions, SandboxLimits.from_config(cfg), cfg.workers)
    metrics = summarize(results, cfg.k)
    metrics["n"] = cfg.n
    metrics["sandbox"] = describe()
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "passk.json", metrics)
        with open(tmp / "completions.jsonl", "w", encoding="utf-8") as f:
            for problem in problems:
                for completion, result in zip(completions[problem.task_id], results[problem.task_id]):
                    rec = {"task_id": problem.task_id, "completion": completion, "status": result.status}
                    rec["detail"] = result.detail[-500:]
                    f.write(json.dumps(rec) + "\n")
        record_stage(params, tmp, "passk")
    return metrics
