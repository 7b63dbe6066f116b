"""`frontier exp`: the experiments table that fits a terminal, checked against what `dvc exp show --json` says.

A real DVC repository with real experiments (`dvc exp run --set-param`), its one stage a script that writes
the pipeline's metrics files from params.yaml in a blink; the real pipeline's metrics reach the same view in
tests/workflow/test_end_to_end.py, which checks its table with `assert_view_matches` below.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from frontier.cli import main
from frontier.exp_view import format_value, render, rows_from_dvc, short_names
from tests.workflow.helpers import stage_env

# The view's metric columns (group.header) and where `dvc exp show --json` has them: written out here, not
# taken from frontier.exp_view, so that a wrong mapping there fails.
METRIC_SOURCES = {
    "train.best_val": ("runs/train/metrics.json", "best_val_loss"),
    "eval.loss": ("runs/eval/metrics.json", "val_loss"),
    "eval.bpb": ("runs/eval/metrics.json", "bits_per_byte"),
    "eval.ppl": ("runs/eval/metrics.json", "perplexity"),
    "ft_heldout.base": ("runs/finetune/metrics.json", "base_heldout_loss"),
    "ft_heldout.tuned": ("runs/finetune/metrics.json", "finetuned_heldout_loss"),
    "eval_tuned.bpb": ("runs/eval_finetuned/metrics.json", "bits_per_byte"),
    "eval_tuned.ppl": ("runs/eval_finetuned/metrics.json", "perplexity"),
}
NOTE = "not shown for lack of width"


def parse_view(text: str) -> tuple[list[str], list[list[str]], str]:
    """(column names as group.header, cells per row, the note on left-out columns) of a printed table:
    columns are where the rule line's dashes are; a group names the column it starts over and its
    neighbours up to the next group."""
    lines = text.splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[2])]
    groups = {m.start(): m.group() for m in re.finditer(r"\S+", lines[0])}
    names, group = [], ""
    for start, end in spans:
        group = groups.get(start, group)
        header = lines[1][start:end].strip()
        names.append(f"{group}.{header}" if start else header)
    end = next((i for i, ln in enumerate(lines) if i >= 3 and ln.startswith(NOTE)), len(lines))
    return names, [[ln[s:e].strip() for s, e in spans] for ln in lines[3:end]], " ".join(lines[end:])


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}


def _expected_rows(baselines: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, DVC's data) per row, in `dvc exp show`'s order."""
    out = []
    for base in baselines:
        out.append(("workspace" if base["rev"] == "workspace" else base["name"] or base["rev"][:7], base["data"]))
        for exp_range in base.get("experiments") or []:
            out += [(exp["name"], exp["data"]) for exp in exp_range["revs"]]
    return out


def _names_key(name: str, key: str) -> bool:
    """Whether a shown param name (group.header, either part possibly cut in the middle with "…") is the
    end of the dotted `key`."""
    pattern = ".*".join(re.escape(part) for part in name.split("…"))
    return re.search(rf"(?:^|\.){pattern}$", key) is not None


def _same(cell: str, value: Any) -> bool:
    if value is None:
        return cell == "-"
    if isinstance(value, float):  # a few significant digits: within rounding of the fourth
        return math.isclose(float(cell), value, rel_tol=6e-4)
    return cell == (str(value).lower() if isinstance(value, bool) else str(value))


def assert_view_matches(view: str, baselines: list[dict[str, Any]], width: int = 120) -> list[str]:
    """`frontier exp`'s `view` shows what `dvc exp show --json` reported (`baselines`): no line wider than
    `width`, a row per experiment, exactly the params that differ between rows (by a name that ends only
    their key) and the chosen metrics at their values, or named as left out. Returns the column names."""
    assert all(len(line) <= width for line in view.splitlines()), [ln for ln in view.splitlines() if len(ln) > width]
    names, rows, note = parse_view(view)
    expected = _expected_rows(baselines)
    assert [r[0] for r in rows] == [name for name, _ in expected], view
    params = [_flat(data["params"]["params.yaml"]["data"]) for _, data in expected]
    keys = {k for p in params for k in p}
    changed = {k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1}
    left_out = note.split(": ", 1)[1].split(", ") if note else []
    assert names[0] == "Experiment" and set(METRIC_SOURCES) <= {*names, *left_out}, (names, left_out)
    for name in [*names[1:], *left_out]:
        if name in METRIC_SOURCES:
            continue
        matching = [k for k in keys if _names_key(name, k)]
        assert len(matching) == 1 and matching[0] in changed, (name, matching)  # one param, a changed one
    for key in changed:
        assert sum(_names_key(n, key) for n in [*names, *left_out]) == 1, (key, names, left_out)
    for (_, data), cells, p in zip(expected, rows, params):
        for name, cell in zip(names[1:], cells[1:]):
            if name in METRIC_SOURCES:
                path, key = METRIC_SOURCES[name]
                value = data["metrics"].get(path, {}).get("data", {}).get(key)
            else:
                value = p.get(next(k for k in changed if _names_key(name, k)))
            assert _same(cell, value), (name, cell, value)
    return names


# The stage of the DVC repository below: the pipeline's metrics files, numbers derived from params.yaml.
MAKE_METRICS = """
import json, math, os, yaml
p = yaml.safe_load(open("params.yaml"))
loss = 5 + 3 / p["train"]["max_steps"] + 100 * p["optimizer"]["lr"] + p["prepare"]["clean"]["max_repeated_line_ratio"] / 7
tuned = loss - p["finetune"]["max_steps"] / 1000
files = {
    "runs/train/metrics.json": {"best_val_loss": loss, "final_val_loss": loss + 0.01, "steps": p["train"]["max_steps"]},
    "runs/eval/metrics.json": {"val_loss": loss + 0.02, "bits_per_byte": (loss + 0.02) / math.log(2) / 3.1,
                               "perplexity": math.exp(loss + 5), "per_source": {"stdlib": {"bits_per_byte": 1.5}}},
    "runs/finetune/metrics.json": {"base_heldout_loss": loss + 0.05, "finetuned_heldout_loss": tuned},
    "runs/eval_finetuned/metrics.json": {"val_loss": tuned, "bits_per_byte": tuned / math.log(2) / 3.1,
                                         "perplexity": math.exp(tuned)},
}
for path, data in files.items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(data, open(path, "w"))
"""
PARAMS = {
    "seed": 1337,
    "prepare": {"clean": {"max_repeated_line_ratio": 1.0, "min_chars": 32}},
    "optimizer": {"lr": 0.003},
    "train": {"max_steps": 12, "micro_batch_size": 4},
    "finetune": {"lr": 0.001, "max_steps": 4},
}


def _run(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) == ok, (
        f"{' '.join(args)}: {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], root)


@pytest.mark.slow
def test_view_of_real_dvc_experiments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    root.mkdir()
    frontier = [sys.executable, "-m", "frontier", "exp"]
    outside = _run(frontier, root, ok=False)  # not a DVC repository: one line, no traceback
    assert outside.returncode == 2 and "Traceback" not in outside.stderr and "DVC repository" in outside.stderr

    (root / "make_metrics.py").write_text(MAKE_METRICS)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    metrics = [{path: {"cache": False}} for path in sorted({path for path, _ in METRIC_SOURCES.values()})]
    stage = {"cmd": "python make_metrics.py", "deps": ["make_metrics.py"], "params": list(PARAMS), "metrics": metrics}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"results": stage}}, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _dvc(root, "init", "-q")
    _dvc(root, "repro")
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], root)
    _dvc(root, "exp", "run", "-n", "shorter", "--set-param", "train.max_steps=8")
    _dvc(root, "exp", "run", "-n", "tuned-more", "--set-param", "optimizer.lr=0.03", "--set-param",
         "finetune.max_steps=6", "--set-param", "prepare.clean.max_repeated_line_ratio=0.5")  # fmt: skip

    view = _run(frontier, root).stdout  # not a terminal: 120 columns
    baselines = json.loads(_dvc(root, "exp", "show", "--json").stdout)
    names = assert_view_matches(view, baselines)
    assert len(_expected_rows(baselines)) == 4  # workspace, the commit, two experiments
    # every changed param shown, by a name that says which: max_steps of train and of finetune, lr of the
    # optimizer (finetune has one too), the long ratio cut in its middle
    assert {"optimizer.lr", "train.max_steps", "finetune.max_steps", "clean.max_repea…line_ratio"} <= set(names)
    # the results compared first: all there beside four changed params (the fine-tuned eval's only if room is left)
    assert set(METRIC_SOURCES) - {"eval_tuned.bpb", "eval_tuned.ppl"} <= set(names), view

    saved = tmp_path / "exps.json"
    saved.write_text(json.dumps(baselines))
    assert main(["exp", "--json-file", str(saved), "--width", "60"]) == 0
    narrow = capsys.readouterr().out
    assert NOTE in narrow and "optimizer.lr" in parse_view(narrow)[2]  # named under the table, not cut
    assert_view_matches(narrow, baselines, 60)

    assert main(["exp", "--json-file", str(saved), "--sort-by", "eval.bpb"]) == 0
    names, rows, _ = parse_view(capsys.readouterr().out)
    bpb = [float(r[names.index("eval.bpb")]) for r in rows[2:]]  # the two experiments, under their commit
    assert bpb == sorted(bpb) and [r[0] for r in rows[2:]] == ["shorter", "tuned-more"], rows  # DVC: newest first


def _state(name: str | None, rev: str, params: dict[str, Any] | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """One row as DVC 3 writes it in `dvc exp show --json`."""
    data = None if params is None else {"rev": rev, "params": {"params.yaml": {"data": params}}, "metrics": metrics}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}


def test_many_changed_params_and_odd_rows_fit() -> None:
    """Twenty changed params, an experiment still queued, a metrics file DVC could not read: 120 columns,
    the core metrics kept, what does not fit named."""
    base = {f"section{i}": {"a_rather_long_parameter_name": i} for i in range(20)}
    changed = {f"section{i}": {"a_rather_long_parameter_name": i + 0.123456} for i in range(20)}
    metrics = {"runs/eval/metrics.json": {"data": {"bits_per_byte": 1.23456789, "val_loss": 12345.678}},
               "runs/finetune/metrics.json": {"error": {"type": "JSONDecodeError", "msg": "bad"}}}  # fmt: skip
    head = _state("main", "a" * 40, base, metrics)
    head["experiments"] = [
        {"revs": [_state("wide", "b" * 40, changed, metrics)], "executor": None, "name": "wide"},
        {"revs": [_state("later", "c" * 40, None, {})], "executor": {"state": "queued"}, "name": "later"},
    ]
    text = render(rows_from_dvc([_state(None, "workspace", base, metrics), head]))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120 and NOTE in text, text
    names, rows, note = parse_view(text)
    assert [r[0] for r in rows] == ["workspace", "main", "wide", "later (queued)"]
    assert {"eval.bpb", "eval.loss", "ft_heldout.base"} <= set(names) and "section19.a_rather_…meter_name" in note
    cells = dict(zip(names, rows[2]))
    assert cells["eval.bpb"] == "1.235" and cells["eval.loss"] == "12346" and cells["ft_heldout.base"] == "!"
    assert cells["train.best_val"] == "-" and set(rows[3][1:]) == {"-"}


def test_values_and_names() -> None:
    assert [format_value(v) for v in (3e-4, 5.896268, 363.6777, 31234.5, 1.5e10, 14, True, None, [1, 2])] == [
        "0.0003", "5.896", "363.7", "31234", "1.5e+10", "14", "true", "-", "[1,2]"]  # fmt: skip
    assert format_value(-0.002370081, 3) == "-0.00237"
    keys = ["optimizer.lr", "finetune.lr", "train.max_steps", "finetune.max_steps", "prepare.clean.max_chars",
            "model.hidden_size", "seed", "other.yaml:x.y"]  # fmt: skip
    names = short_names(keys, keys)
    assert names["optimizer.lr"] == ("optimizer", "lr") and names["finetune.max_steps"] == ("finetune", "max_steps")
    assert names["prepare.clean.max_chars"] == ("clean", "max_chars") and names["seed"] == ("", "seed")
    assert names["other.yaml:x.y"] == ("other.yaml:x", "y")
    # an end shared by two keys is made longer until it names one
    assert short_names(["a.clean.max_chars"], ["a.clean.max_chars", "b.clean.max_chars"]) == {
        "a.clean.max_chars": ("a.clean", "max_chars")}  # fmt: skip
