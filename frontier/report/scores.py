"""The report's "Scores" section: every model the pipeline made, scored the same way, side by side.

Reads what the evaluate stage wrote for each model (metrics.json + run.json): lm-evaluation-harness
figures (``harness``: task -> acc, acc_norm, their stderr) and pass@k (``passk``, or why it was skipped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from frontier.report.html import Raw, esc, image, table
from frontier.report.plots import to_png

Evals = Mapping[str, Mapping[str, Any]]  # model label ("pretrained", "fine-tuned") -> its evaluate metrics

_HARNESS_SHOWN = ("acc", "acc_norm")


def score_keys(evals: Evals) -> list[tuple[str, str]]:
    """(label, key) of every score any model has, in a stable order: harness tasks by name, then pass@k by k.
    A key is "harness/<task>/<metric>" or "passk/pass@<k>"."""
    keys: dict[str, str] = {}
    for metrics in evals.values():
        for task, row in sorted((metrics.get("harness") or {}).items()):
            for metric in _HARNESS_SHOWN:
                if metric in row:
                    keys[f"harness/{task}/{metric}"] = f"{task} {metric}"
    passk = sorted({k for m in evals.values() for k in (m.get("passk") or {}) if k.startswith("pass@")},
                   key=lambda k: int(k.split("@")[1]))  # fmt: skip
    for k in passk:
        keys[f"passk/{k}"] = k
    return [(label, key) for key, label in keys.items()]


def score(metrics: Mapping[str, Any], key: str) -> tuple[float | None, float | None]:
    """(value, stderr) of a score_keys key in one model's metrics; None where the model lacks it."""
    kind, _, rest = key.partition("/")
    if kind == "harness":
        task, _, metric = rest.rpartition("/")
        row = (metrics.get("harness") or {}).get(task) or {}
        return row.get(metric), row.get(f"{metric}_stderr")
    return (metrics.get("passk") or {}).get(rest), None


def _cell(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f} ± {stderr:.3f}" if stderr is not None else f"{value:.3f}"


def scores_table(evals: Evals) -> str:
    """One row per score, one column per model; pass@k's problem count and any skip are said under it."""
    keys = score_keys(evals)
    notes = []
    for label, metrics in evals.items():
        passk = metrics.get("passk") or {}
        if "problems" in passk:
            notes.append(f"{label}: pass@k over {int(passk['problems'])} problems, n = {int(passk.get('n', 0))}")
        if metrics.get("passk_skipped"):
            notes.append(f"{label}: pass@k skipped: {metrics['passk_skipped']}")
    if not keys:
        body = '<p class="muted">No scores: evaluate.harness.tasks is empty and evaluate.passk.in_evaluate off.</p>'
    else:
        rows = [(label, *(Raw(esc(_cell(*score(m, key)))) for m in evals.values())) for label, key in keys]
        body = table(rows, ["score", *evals])
    return body + "".join(f'<p class="muted">{esc(n)}</p>' for n in notes)


def scores_figure(evals: Evals, *, dpi: int) -> bytes | None:
    """Grouped bars: one group per score, one bar per model, stderr as error bars (None: no scores)."""
    keys = score_keys(evals)
    if not keys:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(keys) + 2), 3.8), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(evals))
    for i, (model, metrics) in enumerate(evals.items()):
        pairs = [score(metrics, key) for _, key in keys]
        xs = [j + (i - (len(evals) - 1) / 2) * width for j in range(len(keys))]
        values = [v if v is not None else 0.0 for v, _ in pairs]
        errors = [e if e is not None else 0.0 for _, e in pairs]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([label for label, _ in keys], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    return to_png(fig)


def scores_section(evals: Evals, *, dpi: int) -> str:
    png = scores_figure(evals, dpi=dpi)
    figure = image(png, "scores by model", "each score for each model; bars: ± one standard error") if png else ""
    return scores_table(evals) + figure
