"""lm-evaluation-harness tasks scored on a model already in memory (evaluate.harness).

lm-eval (`lm_eval`, in the lock) runs the tasks through its `HFLM` wrapper around the stage's own model
and tokenizer, so nothing is loaded twice. Task names resolve against lm-eval's registry, the user's
task directories (`include`, lm-eval's ``--include_path``) and Frontier's example task, which is
written into the stage's output with its data file's absolute path (`harness/tasks/`): that copy is
what ran, and ``lm_eval --include_path <out>/harness/tasks`` runs it again from the command line.

Data sets are read offline: a registry task whose data are not in the local datasets cache is refused
with one line rather than downloaded (this system never fetches data from a hub at run time).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frontier.errors import ConfigError

log = logging.getLogger("frontier.eval")

EXAMPLE_TASK = "frontier_python_syntax"
_EXAMPLE_DIR = Path(__file__).parent / "harness_tasks"
_EXAMPLE_DATA = "python_syntax.jsonl"


def write_example_task(directory: Path) -> Path:
    """The example task's YAML in `directory`, naming its data file by absolute path; returns the YAML."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (_EXAMPLE_DIR / "python_syntax.yaml").read_text(encoding="utf-8")
    data = (_EXAMPLE_DIR / _EXAMPLE_DATA).resolve()
    relative = f"test: {_EXAMPLE_DATA}\n"
    if relative not in text:  # the shipped YAML and this function changed apart
        raise RuntimeError(f"{_EXAMPLE_DIR / 'python_syntax.yaml'}: no '{relative.strip()}' line to resolve")
    out = directory / "python_syntax.yaml"
    out.write_text(text.replace(relative, f"test: {data}\n"), encoding="utf-8")
    return out


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """datasets and the hub client offline for the call (their flags are read at import: set the constants)."""
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


# lm-eval's modules that draw tqdm bars per document and request (their \r frames would fill a stage's log)
_BAR_MODULES = ("lm_eval.api.model", "lm_eval.api.task", "lm_eval.models.huggingface")


@contextlib.contextmanager
def _no_bars() -> Iterator[None]:
    """lm-eval's progress bars off for the call: each module's `tqdm` name, forced to disable=True."""
    import importlib

    from tqdm import tqdm

    def quiet(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return tqdm(*args, **kwargs)

    modules = [importlib.import_module(name) for name in _BAR_MODULES]
    saved = [m.tqdm for m in modules]
    for module in modules:
        module.tqdm = quiet
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.tqdm = original


def _include_dirs(cfg: Any, tasks_dir: Path) -> list[str]:
    dirs = [str(tasks_dir)]
    for entry in cfg.include:
        path = Path(entry).expanduser()
        if not path.is_dir():
            raise ConfigError(f"evaluate.harness.include: {entry}: not a directory (expected one holding task YAMLs)")
        dirs.append(str(path.resolve()))
    return dirs


def _check_names(names: list[str], known: list[str]) -> None:
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ConfigError(
                f"evaluate.harness.tasks: {name!r} is neither an lm-eval task nor one under "
                f"evaluate.harness.include{hint}"
            )


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per task, lm-eval's figures under plain names: ``acc,none`` -> ``acc``; another filter keeps its name
    (``exact_match,strict-match`` -> ``exact_match_strict-match``); stderr lm-eval could not compute -> None."""
    out: dict[str, dict[str, float | None]] = {}
    for task, figures in results.items():
        row: dict[str, float | None] = {}
        for key, value in figures.items():
            if "," not in key:
                continue  # "alias", "name"
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric}_{filt}"
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            row[name] = number if number is not None and math.isfinite(number) else None
        out[task] = row
    return out


def run_harness(model: Any, tokenizer: Any, cfg: Any, tasks_dir: Path) -> dict[str, dict[str, float | None]]:
    """Score `model` on `cfg.tasks` (an evaluate.harness section); the example task's YAML goes to `tasks_dir`.

    Returns {task: {"acc": ..., "acc_stderr": ..., "acc_norm": ..., "samples": n}} (what each task reports)."""
    if not cfg.tasks:
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    write_example_task(tasks_dir)
    dirs = _include_dirs(cfg, tasks_dir)
    # the user's and the example's tasks first: indexing lm-eval's whole registry (~15k names) takes ~20 s
    manager = TaskManager(include_path=dirs, include_defaults=False)
    if not set(cfg.tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=dirs)
    _check_names(cfg.tasks, manager.all_tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    try:
        with _offline(), _no_bars():
            out = simple_evaluate(
                model=lm,
                tasks=list(cfg.tasks),
                num_fewshot=cfg.num_fewshot,
                limit=cfg.limit,
                task_manager=manager,
                log_samples=False,
            )
    except (ConnectionError, FileNotFoundError, OSError) as exc:
        raise ConfigError(
            f"evaluate.harness.tasks: {', '.join(cfg.tasks)}: a task's data set is not on disk ({exc}); lm-eval "
            "reads the local datasets cache offline here: put the data there (HF_DATASETS_CACHE), or write a "
            "task YAML with dataset_path: json and local data_files"
        ) from None
    metrics = task_metrics(out["results"])
    for task, n in out.get("n-samples", {}).items():
        if task in metrics:
            metrics[task]["samples"] = float(n.get("effective", n.get("original", 0)))
    for task, row in metrics.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if v is not None and k != "samples")
        log.info("harness: %s: %s", task, shown)
    return metrics
