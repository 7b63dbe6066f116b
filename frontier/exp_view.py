"""`frontier exp`: DVC's experiments as one table that fits a terminal (120 columns unless told otherwise).

`dvc exp show` cannot be made that narrow: a metric's column is named ``path:key`` whenever two metrics
files share the key (``runs/eval/metrics.json:bits_per_byte``, 36 characters for a 6-character number),
``--precision`` only applies to ``--csv`` (the table always shows 5 significant digits), and
``--no-pager`` folds every column past the terminal's edge into one "…". This reads what
``dvc exp show --json`` reports and prints one row per experiment: the params that differ between the
rows (short names), then the results people compare, to a few significant digits. Columns that do not fit
the width are left out and named under the table, never wrapped or cut.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontier.errors import FrontierError
from frontier.pipeline import ALL_STAGES

DEFAULT_WIDTH = 120
DEFAULT_DIGITS = 4
GAP = "  "  # between columns
LABEL_MAX = 24  # experiment names past this are cut (DVC's generated names are two words, ~15 characters)
VALUE_MAX = 14  # a param's value past this is cut (a list of sources, a long path)
HEADER_MAX = 20  # a shortened param name past this gets its middle cut
MISSING, ERRORED = "-", "!"  # as `dvc exp show`: no value / the file could not be read


@dataclass(frozen=True)
class Metric:
    group: str  # the header's first line
    header: str  # its second
    stage: str  # a stage of frontier.pipeline; the value is read from its metrics.json
    key: str
    core: bool  # kept ahead of the changed params when the width runs out

    @property
    def path(self) -> str:
        return next(m for m in ALL_STAGES[self.stage].metrics if m.endswith("/metrics.json"))


# The results compared between experiments, in column order (stage metrics files: frontier/pipeline.py).
METRICS = (
    Metric("train", "best_val", "train", "best_val_loss", True),
    Metric("eval", "loss", "evaluate", "val_loss", True),
    Metric("eval", "bpb", "evaluate", "bits_per_byte", True),
    Metric("eval", "ppl", "evaluate", "perplexity", True),
    Metric("ft_heldout", "base", "finetune", "base_heldout_loss", True),
    Metric("ft_heldout", "tuned", "finetune", "finetuned_heldout_loss", True),
    Metric("eval_tuned", "bpb", "evaluate_finetuned", "bits_per_byte", False),
    Metric("eval_tuned", "ppl", "evaluate_finetuned", "perplexity", False),
)
LEGEND = (
    "Columns: the params that differ between the rows (section over key, by the shortest end of the key that "
    "names one param), then train.best_val: train's best validation loss; eval.loss/bpb/ppl: evaluate's val_loss, "
    "bits_per_byte and perplexity (runs/eval); ft_heldout.base/tuned: finetune's held-out loss before and after "
    "tuning; eval_tuned.bpb/ppl: the fine-tuned model's evaluation (runs/eval_finetuned). "
    "- no value, ! DVC could not read it."
)


@dataclass
class Row:
    """One experiment (or the workspace, or a baseline commit) as `dvc exp show --json` reports it."""

    label: str  # as shown: experiments indented under their baseline
    params: dict[str, Any] | None  # flattened "section.key" -> value; None: DVC has no data for the row
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics file -> {"data": .., "error": ..}
    failed: bool = False  # DVC reported an error for the whole row
    experiment: bool = False  # an experiment (under the baseline row before it), not a baseline


@dataclass
class Column:
    group: str  # the header's first line: a params section, a stage ("" for none)
    header: str  # its second line
    cells: list[str]
    numeric: bool
    priority: int  # lower is kept first when the width runs out
    param: bool = False  # a params section never shares its header with a stage's metrics beside it

    @property
    def name(self) -> str:
        """How --sort-by and the note on left-out columns name it: group.header."""
        return f"{self.group}.{self.header}" if self.group else self.header

    @property
    def width(self) -> int:
        """Its own: the group line spans the run of neighbours sharing it (see _widths)."""
        return max([len(self.header), *map(len, self.cells)])


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (DVC's own spelling of params); lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _row(state: dict[str, Any], label: str, experiment: bool = False) -> Row:
    data = state.get("data") or {}
    params: dict[str, Any] | None = None
    if data:
        params = {}
        for fname, entry in (data.get("params") or {}).items():
            flat = flatten((entry or {}).get("data") or {})
            # params.yaml is every stage's file: its keys go bare, another file's are named by it
            params.update(flat if fname == "params.yaml" else {f"{fname}:{k}": v for k, v in flat.items()})
    metrics = {Path(f).as_posix(): m or {} for f, m in (data.get("metrics") or {}).items()}
    failed = bool(state.get("error")) and not data
    return Row(label=label, params=params, metrics=metrics, failed=failed, experiment=experiment)


def rows_from_dvc(baselines: Sequence[dict[str, Any]]) -> list[Row]:
    """`dvc exp show --json` as rows: each baseline (the workspace, a commit), its experiments under it."""
    rows = []
    for base in baselines:
        rev = str(base.get("rev", ""))
        rows.append(_row(base, "workspace" if rev == "workspace" else base.get("name") or rev[:7]))
        for exp_range in base.get("experiments") or []:
            state = (exp_range.get("executor") or {}).get("state")
            for exp in exp_range.get("revs") or []:
                name = exp.get("name") or exp_range.get("name") or str(exp.get("rev", ""))[:7]
                # a queued, running or failed experiment says so (its results are missing or stale)
                suffix = f" ({state})" if state and state != "success" else ""
                rows.append(_row(exp, f"  {name}{suffix}", experiment=True))
    return rows


def format_value(value: Any, digits: int = DEFAULT_DIGITS) -> str:
    """A cell: floats to `digits` significant digits (whole numbers up to 1e9 in full rather than as
    an exponent), other values as written in params.yaml."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if 10**digits <= abs(value) < 1e9:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def changed_params(rows: Iterable[Row]) -> list[str]:
    """Keys whose value differs between the rows DVC has data for (a key some rows lack counts as changed),
    in params.yaml's order."""
    with_data = [r.params for r in rows if r.params is not None]
    keys: dict[str, None] = {}
    for params in with_data:
        keys.update(dict.fromkeys(params))
    absent = object()

    def seen(key: str) -> set[str]:
        return {json.dumps(p.get(key, absent), sort_keys=True, default=repr) for p in with_data}

    return [k for k in keys if len(seen(k)) > 1]


def _middle_cut(text: str, limit: int = HEADER_MAX) -> str:
    """A long name with its middle replaced by "…": both ends stay readable."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def short_names(keys: Sequence[str], all_keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each key as (section, name): the shortest end of its dotted key, of at least two parts, that ends no
    other key of the file (data.prepare.clean.max_chars: ("clean", "max_chars") unless another section has a
    clean.max_chars). Parts past HEADER_MAX characters have their middle cut; two that end up alike are
    shown by their full keys."""
    others = set(all_keys) | set(keys)
    out: dict[str, tuple[str, str]] = {}
    for key in keys:
        file, _, dotted = key.rpartition(":")
        parts = dotted.split(".")
        tail = parts
        for n in range(min(2, len(parts)), len(parts) + 1):
            end = ".".join(parts[-n:])
            if not any(o != key and (o == end or o.endswith("." + end)) for o in others):
                tail = parts[-n:]
                break
        section = ".".join(tail[:-1])
        out[key] = (_middle_cut(f"{file}:{section}" if file else section), _middle_cut(tail[-1]))
    alike = [names for names in out.values() if list(out.values()).count(names) > 1]
    return {k: (k.rpartition(".")[0], k.rpartition(".")[2]) if n in alike else n for k, n in out.items()}


def _metric_cell(row: Row, metric: Metric, digits: int) -> str:
    if row.failed:
        return ERRORED
    entry = next((m for f, m in row.metrics.items() if f == metric.path or f.endswith("/" + metric.path)), None)
    if entry is None:
        return MISSING
    if entry.get("error"):
        return ERRORED
    return format_value(flatten(entry.get("data") or {}).get(metric.key), digits)


def _param_cell(row: Row, key: str, digits: int) -> str:
    if row.failed:
        return ERRORED
    if row.params is None:
        return MISSING
    return _cut(format_value(row.params.get(key), digits), VALUE_MAX)


def build_columns(rows: Sequence[Row], digits: int = DEFAULT_DIGITS) -> list[Column]:
    """The table in display order: experiment, changed params, metrics (priorities decide what a narrow
    width keeps: the experiment, then the core metrics, then params in order, then the other metrics)."""
    columns = [Column("", "Experiment", [_cut(r.label, LABEL_MAX) for r in rows], False, 0)]
    keys = changed_params(rows)
    names = short_names(keys, {k for r in rows if r.params for k in r.params})
    for key in keys:
        cells = [_param_cell(r, key, digits) for r in rows]
        numeric = all(c in (MISSING, ERRORED) or _is_number(c) for c in cells)
        columns.append(Column(*names[key], cells, numeric, 2, param=True))
    for m in METRICS:
        cells = [_metric_cell(r, m, digits) for r in rows]
        columns.append(Column(m.group, m.header, cells, True, 1 if m.core else 3))
    return columns


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _runs(shown: Sequence[Column]) -> list[list[int]]:
    """Indexes of neighbouring columns that share a group: it is named once, over all of them."""
    runs: list[list[int]] = []
    for i, c in enumerate(shown):
        first = shown[runs[-1][0]] if runs else None
        if first is not None and (c.group, c.param) == (first.group, first.param):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _widths(shown: Sequence[Column]) -> list[int]:
    """Each column's width; the last of a run is widened where the run is narrower than its group's name."""
    widths = [c.width for c in shown]
    for run in _runs(shown):
        span = sum(widths[i] for i in run) + len(GAP) * (len(run) - 1)
        widths[run[-1]] += max(0, len(shown[run[0]].group) - span)
    return widths


def fit(columns: Sequence[Column], width: int) -> tuple[list[Column], list[Column]]:
    """(shown, left out): columns taken by priority, then display order, while the table stays within
    `width`; the shown ones keep their display order."""
    chosen: set[int] = set()
    for i in sorted(range(len(columns)), key=lambda i: (columns[i].priority, i)):
        trial = [c for j, c in enumerate(columns) if j in chosen or j == i]
        if sum(_widths(trial)) + len(GAP) * (len(trial) - 1) <= width:
            chosen.add(i)
    shown = [c for i, c in enumerate(columns) if i in chosen]
    return shown, [c for i, c in enumerate(columns) if i not in chosen]


def render(rows: Sequence[Row], width: int = DEFAULT_WIDTH, digits: int = DEFAULT_DIGITS) -> str:
    """The table as text, no line longer than `width`: two header lines (section or stage over name),
    a rule, a row per experiment, and a note naming any column left out."""
    if not rows:
        return "no experiments: run `dvc exp run` (or `dvc repro` and commit) first\n"
    shown, left_out = fit(build_columns(rows, digits), width)
    widths = _widths(shown)

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if col.numeric else c.ljust(w) for c, col, w in zip(cells, shown, widths)]
        return GAP.join(parts).rstrip()

    spans = [(r[0], sum(widths[i] for i in r) + len(GAP) * (len(r) - 1)) for r in _runs(shown)]
    out = [GAP.join(shown[i].group.ljust(span) for i, span in spans).rstrip()]
    out += [line([c.header for c in shown]), line(["-" * w for w in widths])]
    out += [line([c.cells[i] for c in shown]) for i in range(len(rows))]
    if left_out:
        note = f"not shown for lack of width (--width): {', '.join(c.name for c in left_out)}"
        out += textwrap.wrap(note, width, break_on_hyphens=False)
    return "\n".join(out) + "\n"


def dvc_experiments(dvc_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """What `dvc exp show --json` reports, from this environment's DVC, in the current directory."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *dvc_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise FrontierError(f"`dvc exp show --json` failed: {said[-1] if said else f'exit code {proc.returncode}'}")
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise FrontierError(f"`dvc exp show --json` printed no JSON ({exc})") from None


def load_json(path: str) -> list[dict[str, Any]]:
    """A saved `dvc exp show --json` output ('-': standard input)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FrontierError(f"{path}: not the JSON `dvc exp show --json` prints ({exc})") from None
    if not isinstance(data, list):
        raise FrontierError(f"{path}: expected the list `dvc exp show --json` prints, got {type(data).__name__}")
    return data


def sort_rows(rows: list[Row], by: str, digits: int = DEFAULT_DIGITS) -> list[Row]:
    """Experiments sorted by a shown column (ascending; missing values last) within their baseline."""
    columns = build_columns(rows, digits)
    # group.header, or the header alone where only one column has it (best_val, max_steps if unique)
    matches = [c for c in columns[1:] if by == c.name] or [c for c in columns[1:] if by == c.header]
    if len(matches) != 1:
        have = ", ".join(c.name for c in columns[1:])
        raise FrontierError(f"--sort-by {by}: {'no such' if not matches else 'more than one'} column (have: {have})")
    column = matches[0]
    key = {id(r): c for r, c in zip(rows, column.cells)}

    def order(row: Row) -> tuple[int, float | str]:
        cell = key[id(row)]
        return (0, float(cell)) if _is_number(cell) else (1, cell)

    out: list[Row] = []
    group: list[Row] = []
    for row in rows:
        if row.experiment:
            group.append(row)
            continue
        out += sorted(group, key=order)
        group = []
        out.append(row)
    return out + sorted(group, key=order)


HELP = "experiments as one table within the terminal: changed params and the main results (dvc exp show --json)"


def add_arguments(p: Any) -> None:
    """`frontier exp`'s options (an argparse parser): the table's own, then those passed to dvc exp show."""
    p.add_argument("--width", type=int, default=None,
                   help=f"the longest line (default: the terminal's width, {DEFAULT_WIDTH} when not a terminal)")  # fmt: skip
    p.add_argument("--digits", type=int, default=DEFAULT_DIGITS, help="significant digits of floats (default: 4)")
    p.add_argument("--sort-by", metavar="COLUMN", help="sort experiments by a column, ascending (e.g. eval.bpb)")
    p.add_argument("--json-file", metavar="FILE", help="read a saved `dvc exp show --json` ('-': stdin) instead")
    p.add_argument("-a", "--all-branches", action="store_true", help="dvc exp show -a: every branch's experiments")
    p.add_argument("-A", "--all-commits", action="store_true", help="dvc exp show -A: every commit's experiments")
    p.add_argument("--rev", action="append", default=[], help="dvc exp show --rev (repeatable)")
    p.add_argument("-n", "--num", type=int, help="dvc exp show -n: that many commits back from each --rev")


def command(ns: Any) -> None:
    """`frontier exp`: print the table for the parsed options `ns`."""
    import shutil

    width = ns.width if ns.width is not None else (
        shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns if sys.stdout.isatty() else DEFAULT_WIDTH)  # fmt: skip
    if width < 20 or not 1 <= ns.digits <= 15:
        raise FrontierError(f"--width must be at least 20 and --digits 1 to 15 (got {width}, {ns.digits})")
    if ns.json_file:
        baselines = load_json(ns.json_file)
    else:
        dvc_args = [*(["-a"] if ns.all_branches else []), *(["-A"] if ns.all_commits else [])]
        dvc_args += [a for rev in ns.rev for a in ("--rev", rev)] + (["-n", str(ns.num)] if ns.num else [])
        baselines = dvc_experiments(dvc_args)
    rows = rows_from_dvc(baselines)
    if ns.sort_by:
        rows = sort_rows(rows, ns.sort_by, ns.digits)
    sys.stdout.write(render(rows, width, ns.digits))
