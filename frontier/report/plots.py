"""Loss-curve figures for the report, rendered to PNG bytes with matplotlib's Agg backend."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from frontier.errors import DataError

Series = dict[str, list[float]]
MIN_POINTS_TO_SMOOTH = 20


def read_csv(path: Path, required: tuple[str, ...]) -> Series:
    """Numeric columns of a CSV log; rows with a missing or non-finite required value are skipped."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (have {reader.fieldnames})")
            columns: Series = {name: [] for name in reader.fieldnames or []}
            for row in reader:
                try:
                    values = {k: float(v) if v not in (None, "") else math.nan for k, v in row.items() if k}
                except ValueError:
                    continue  # a torn last line of a log still being written
                if all(math.isfinite(values.get(c, math.nan)) for c in required):
                    for k, v in values.items():
                        columns[k].append(v)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return columns


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = smoothing * acc + (1 - smoothing) * v
        out.append(acc / (1 - smoothing**i) if smoothing else v)
    return out


def loss_figure(train: Series, val: Series | None, *, title: str, smoothing: float, dpi: int) -> bytes:
    """PNG of the train loss (raw and smoothed) with the val loss points over optimizer steps."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.2), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    steps, loss = train["step"], train["loss"]
    if len(steps) >= MIN_POINTS_TO_SMOOTH and smoothing:
        ax.plot(steps, loss, color="#9ecae1", linewidth=1, label="train (raw)")
        ax.plot(steps, ema(loss, smoothing), color="#08519c", linewidth=2, label=f"train (EMA {smoothing:g})")
    elif steps:  # a few logged points: an average would only lag behind them
        ax.plot(steps, loss, ".-", color="#08519c", linewidth=2, label="train")
    if val and val.get("step"):
        ax.plot(val["step"], val["val_loss"], "o-", color="#e6550d", linewidth=2, markersize=4, label="val")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return to_png(fig)


def to_png(fig: object) -> bytes:
    fig.tight_layout()  # type: ignore[attr-defined]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # type: ignore[attr-defined]
    return buf.getvalue()


# (column of plots/train.csv, axis label) of the training-dynamics panels
DYNAMICS = (("lr", "learning rate"), ("grad_norm", "gradient norm"), ("tokens_per_s", "tokens / s"))


def dynamics_figure(train: Series, *, dpi: int, columns: tuple[tuple[str, str], ...] = DYNAMICS) -> bytes | None:
    """PNG with one panel per (column, label) of `columns` present in the log (None when none is)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = []
    for column, label in columns:
        points = [(s, v) for s, v in zip(train.get("step", []), train.get(column, [])) if math.isfinite(v)]
        if points:
            panels.append((label, points))
    if not panels:
        return None
    fig = Figure(figsize=(8, 2.4 * len(panels)), dpi=dpi)
    for i, (label, points) in enumerate(panels, 1):
        ax = fig.add_subplot(len(panels), 1, i)
        ax.plot([s for s, _ in points], [v for _, v in points], ".-", color="#31a354", linewidth=1.5)
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    ax.set_xlabel("step")
    return to_png(fig)
