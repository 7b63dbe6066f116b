"""The report stage: one self-contained HTML page about a run (and loss.png beside it).

Reads the train stage's plots/train.csv, plots/val.csv and metrics.json, the evaluate stage's
metrics.json and samples.jsonl, and optionally the fine-tune stage's metrics.json (base vs
fine-tuned held-out loss) and its own plots/train.csv, the preference stage's (frontier.report.preference),
and the evaluate outputs of the fine-tuned and preference-tuned models (headline figures and scores side by
side with the pretrained model's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from frontier.errors import DataError
from frontier.report.html import Raw, esc, fmt, image, kv_table, page, pre, table
from frontier.report.plots import Series, dynamics_figure, loss_figure, read_csv
from frontier.report.preference import preference_section
from frontier.report.scores import scores_section
from frontier.report.sysinfo import system_info
from frontier.utils.metrics_files import read_metrics

if TYPE_CHECKING:
    from frontier.config import Params
    from frontier.config.report import ReportConfig

log = logging.getLogger(__name__)

_HEADLINE = (
    ("val_loss", "val loss (nats/token)"),
    ("perplexity", "perplexity"),
    ("bits_per_byte", "bits per byte"),
    ("unigram_bits_per_byte", "unigram bits per byte (floor)"),
    ("bpb_vs_unigram", "bits per byte saved vs unigram"),
    ("tokens_evaluated", "tokens evaluated"),
)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: not found ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _read_samples(path: Path, limit: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        if len(out) >= limit:
            break
    return out


def _summary(eval_metrics: dict[str, Any]) -> str:
    rows = []
    for key, label in _HEADLINE:
        if key in eval_metrics:
            value = eval_metrics[key]
            shown = Raw(esc(f"{100 * value:.1f}%")) if key == "bpb_vs_unigram" and isinstance(value, float) else value
            rows.append((label, shown))
    note = ""
    if eval_metrics.get("bytes_estimated"):
        note = '<p class="muted">Bytes scaled from the evaluated fraction of the val split (max_tokens).</p>'
    return table(rows, ["metric", "value"]) + note


def _per_source(eval_metrics: dict[str, Any]) -> str | None:
    per = eval_metrics.get("per_source")
    if not isinstance(per, dict) or not per:
        return None
    rows = [
        (name, m.get("docs"), m.get("tokens_evaluated"), m.get("bytes"), m.get("loss"), m.get("bits_per_byte"))
        for name, m in sorted(per.items())
        if isinstance(m, dict)
    ]
    return table(rows, ["source", "docs", "tokens", "bytes", "loss", "bits per byte"])


def _curves(run_dir: Path) -> tuple[Series, Series | None]:
    """plots/train.csv (required) and plots/val.csv (optional) of a train or finetune out_dir."""
    train_csv, val_csv = run_dir / "plots" / "train.csv", run_dir / "plots" / "val.csv"
    if not train_csv.is_file():
        raise DataError(f"{train_csv}: not found (the train stage writes it)")
    val = read_csv(val_csv, ("step", "val_loss")) if val_csv.is_file() else None
    return read_csv(train_csv, ("step", "loss")), val


def _finetune(ft: dict[str, Any], ft_dir: Path, cfg: ReportConfig) -> str:
    base, tuned = ft.get("base_heldout_loss"), ft.get("finetuned_heldout_loss")
    parts = []
    if isinstance(base, (int, float)) and isinstance(tuned, (int, float)):
        cls = "better" if tuned < base else "worse"
        delta = Raw(f'<span class="{cls}">{esc(fmt(tuned - base))}</span>')
        parts.append(
            table(
                [("base model", base), (f"fine-tuned ({ft.get('method', 'lora')})", tuned), ("change", delta)],
                ["held-out loss on prompt/response pairs (response tokens)", "nats/token"],
            )
        )
    if (ft_dir / "plots" / "train.csv").is_file():
        train, val = _curves(ft_dir)
        png = loss_figure(train, val, title="Fine-tune loss", smoothing=cfg.smoothing, dpi=cfg.dpi)
        parts.append(image(png, "fine-tune loss curve", "train loss on the pairs; val: loss on the held-out pairs"))
    parts.append(kv_table(ft))
    return "".join(parts)


def _samples(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return '<p class="muted">No samples.</p>'
    blocks = []
    for s in samples:
        settings = ", ".join(
            f"{k}={s[k]}" for k in ("mode", "temperature", "top_k", "top_p", "seed") if s.get(k) is not None
        )
        blocks.append(
            f'<div class="sample"><p class="muted">{esc(settings)}</p>'
            f"<pre><b>{esc(s.get('prompt', ''))}</b>{esc(s.get('completion', ''))}</pre></div>"
        )
    return "".join(blocks)


def _compare_evals(evals: dict[str, dict[str, Any]]) -> str:
    """The evaluate stage's headline figures for each model the pipeline made (pretrained, fine-tuned, ...)."""
    rows = [
        (label, *(m.get(key) for m in evals.values()))
        for key, label in _HEADLINE
        if all(key in m for m in evals.values())
    ]
    return table(rows, ["metric (val split)", *evals])


def build_report(
    params: Params,
    train_dir: Path,
    eval_dir: Path,
    out_dir: Path,
    finetune_dir: Path | None = None,
    eval_finetuned_dir: Path | None = None,
    preference_dir: Path | None = None,
    eval_preference_dir: Path | None = None,
) -> Path:
    """Stage: write report.html (self-contained) and loss.png into `out_dir`; returns the HTML path."""
    from frontier.config import to_dict
    from frontier.provenance import record_stage
    from frontier.utils.atomic import atomic_dir

    cfg = params.report
    train_dir, eval_dir, out_dir = Path(train_dir), Path(eval_dir), Path(out_dir)
    train_series, val_series = _curves(train_dir)
    _read_json(eval_dir / "metrics.json", "the evaluate stage writes it")  # present and readable, or one line
    eval_metrics = read_metrics(eval_dir)
    train_metrics = read_metrics(train_dir)  # metrics.json + speed.json + run.json, where present
    samples = _read_samples(eval_dir / "samples.jsonl", cfg.max_samples)
    loss_png = loss_figure(train_series, val_series, title="Training loss", smoothing=cfg.smoothing, dpi=cfg.dpi)

    run_params = train_dir / "params.resolved.yaml"
    config_text = yaml.safe_dump(to_dict(params), sort_keys=False)
    sections = [
        ("Summary", _summary(eval_metrics)),
        (
            "Loss curves",
            image(
                loss_png, "training and validation loss", "train loss at each logged step; val loss at each evaluation"
            ),
        ),
    ]
    dynamics_png = dynamics_figure(train_series, dpi=cfg.dpi)
    if dynamics_png is not None:
        sections.append(
            (
                "Training dynamics",
                image(
                    dynamics_png,
                    "learning rate, gradient norm and throughput",
                    "learning rate, gradient norm and tokens/s at each logged step",
                ),
            )  # fmt: skip
        )
    per_source = _per_source(eval_metrics)
    if per_source:
        sections.append(("Per source", per_source))
    if finetune_dir is not None:
        _read_json(Path(finetune_dir) / "metrics.json", "the finetune stage writes it")  # present, or one line
        ft = read_metrics(Path(finetune_dir))
        sections.append(("Fine-tune", _finetune(ft, Path(finetune_dir), cfg)))
    evals = {"pretrained": eval_metrics}
    if eval_finetuned_dir is not None:
        _read_json(Path(eval_finetuned_dir) / "metrics.json", "the evaluate stage writes it")
        tuned = read_metrics(Path(eval_finetuned_dir))
        evals["fine-tuned"] = tuned
    if preference_dir is not None:
        _read_json(Path(preference_dir) / "metrics.json", "the preference stage writes it")
        pref = read_metrics(Path(preference_dir))
        body = preference_section(pref, Path(preference_dir), smoothing=cfg.smoothing, dpi=cfg.dpi)
        sections.append(("Preference tuning", body))
    if eval_preference_dir is not None:
        _read_json(Path(eval_preference_dir) / "metrics.json", "the evaluate stage writes it")
        evals["preference-tuned"] = read_metrics(Path(eval_preference_dir))
    if len(evals) > 1:
        sections.append((f"{' vs '.join(evals).capitalize()} on val", _compare_evals(evals)))
    sections.append(("Scores", scores_section(evals, dpi=cfg.dpi)))
    sections += [
        ("Samples", _samples(samples)),
        ("Evaluation metrics", kv_table(eval_metrics)),
        ("Training metrics", kv_table(train_metrics) if train_metrics else '<p class="muted">None recorded.</p>'),
        ("Configuration", pre(config_text)),
    ]
    if run_params.is_file():
        sections.append(("Configuration of the training run", pre(run_params.read_text(encoding="utf-8"))))
    sections.append(("Training machine and environment", kv_table(system_info(train_dir))))
    subtitle = f"train: {train_dir} · eval: {eval_dir}" + (f" · finetune: {finetune_dir}" if finetune_dir else "")
    document = page(cfg.title, sections, subtitle)

    with atomic_dir(out_dir) as tmp:
        (tmp / "loss.png").write_bytes(loss_png)
        (tmp / "report.html").write_text(document, encoding="utf-8")
        record_stage(params, tmp, "report")
    log.info("report: %s", out_dir / "report.html")
    return out_dir / "report.html"
