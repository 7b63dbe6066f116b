"""The report's preference-tuning section: held-out rewards before and after, and their curves over the run.

Reads the preference stage's metrics.json (base_heldout_* and tuned_heldout_*: the held-out pairs scored by
the starting model and by the tuned one) and plots/train.csv, plots/val.csv and plots/preference.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frontier.report.html import Raw, esc, fmt, image, kv_table, table
from frontier.report.plots import Series, dynamics_figure, loss_figure, read_csv

# (metrics key after base_heldout_ / tuned_heldout_, label, whether higher is better)
HELDOUT = (
    ("loss", "loss", False),
    ("accuracy", "accuracy (chosen reward > rejected)", True),
    ("margins", "margin (chosen - rejected reward)", True),
    ("rewards_chosen", "reward of the chosen completion", None),
    ("rewards_rejected", "reward of the rejected completion", None),
)
# (column of plots/preference.csv, panel label)
CURVES = (("margins", "margin"), ("accuracy", "accuracy"), ("rewards_chosen", "reward chosen"),
          ("rewards_rejected", "reward rejected"))  # fmt: skip


def _change(before: float, after: float, higher_better: bool | None) -> Any:
    if higher_better is None:
        return after - before
    cls = "better" if (after > before) == higher_better else "worse"
    return Raw(f'<span class="{cls}">{esc(fmt(after - before))}</span>')


def heldout_table(metrics: dict[str, Any]) -> str | None:
    """Held-out figures of the starting and the tuned model side by side (None when metrics has neither)."""
    rows = []
    for key, label, higher_better in HELDOUT:
        before, after = metrics.get(f"base_heldout_{key}"), metrics.get(f"tuned_heldout_{key}")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            rows.append((label, before, after, _change(before, after, higher_better)))
    if not rows:
        return None
    kind = str(metrics.get("loss_kind", "preference")).upper()
    return table(rows, [f"held-out pairs ({kind})", "SFT model (start)", "preference-tuned", "change"])


def preference_section(metrics: dict[str, Any], pref_dir: Path, *, smoothing: float, dpi: int) -> str:
    parts = []
    held = heldout_table(metrics)
    if held:
        parts.append(held)
    plots = Path(pref_dir) / "plots"
    if (plots / "train.csv").is_file():
        val = read_csv(plots / "val.csv", ("step", "val_loss")) if (plots / "val.csv").is_file() else None
        train = read_csv(plots / "train.csv", ("step", "loss"))
        png = loss_figure(train, val, title="Preference loss", smoothing=smoothing, dpi=dpi)
        parts.append(image(png, "preference loss curve", "train loss on the pairs; val: on the held-out pairs"))
    if (plots / "preference.csv").is_file():
        rewards: Series = read_csv(plots / "preference.csv", ("step",))
        png = dynamics_figure(rewards, dpi=dpi, columns=CURVES)
        if png is not None:
            parts.append(image(png, "preference rewards", "rewards of the train pairs at each logged step"))
    parts.append(kv_table(metrics))
    return "".join(parts)
