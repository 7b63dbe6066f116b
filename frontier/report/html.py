"""A self-contained HTML page: inline CSS, images as base64 data URIs, every value escaped."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 4px 10px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.6em; overflow-x: auto; font-size: 13px; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.muted { color: #777; } .better { color: #1a7f37; font-weight: 600; } .worse { color: #b42318; font-weight: 600; }
.sample b { color: #08519c; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers to 4 significant decimals (integers as they are), everything else as text."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return esc(value)
        return f"{value:.4g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.4f}"
    return esc(value)


class Raw(str):
    """Markup that `table` inserts without escaping (built from escaped parts)."""


def table(rows: Iterable[Iterable[Any]], header: Iterable[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i and isinstance(cell, (int, float)) and not isinstance(cell, bool) else ""
            cells.append(f"<td{cls}>{cell if isinstance(cell, Raw) else fmt(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def kv_table(mapping: Mapping[str, Any]) -> str:
    """A two-column table of the scalar entries of a mapping (nested ones flattened one level)."""
    rows = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            rows.extend((f"{key}.{k}", v) for k, v in value.items() if not isinstance(v, (Mapping, list)))
        elif not isinstance(value, list):
            rows.append((key, value))
    return table(rows, ["metric", "value"])


def image(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f'<figcaption class="muted">{esc(caption)}</figcaption>' if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def page(title: str, sections: Iterable[tuple[str, str]], subtitle: str = "") -> str:
    """The whole document: a title and (heading, body markup) sections."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="muted">{esc(subtitle)}</p>')
    for heading, body in sections:
        slug = "".join(c if c.isalnum() else "-" for c in heading.lower())
        parts.append(f'<section id="{esc(slug)}"><h2>{esc(heading)}</h2>{body}</section>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
