"""HTML tables of result documents: key/value tables for nested objects (model card, versions,
settings) and the sortable per-input table, whose columns are found from the samples themselves so
that any application's results read alike."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any, Iterable

MAX_LIST = 8  # list items shown in a cell before "..."


def fmt(v: Any) -> str:
    """A JSON value as short text for a cell."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, list):
        if all(not isinstance(x, (dict, list)) for x in v):
            shown = ", ".join(fmt(x) for x in v[:MAX_LIST])
            return shown + (f", ... ({len(v)} in all)" if len(v) > MAX_LIST else "")
        return f"{len(v)} items"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt(x)}" for k, x in list(v.items())[:MAX_LIST])
    return str(v)


def sort_key(v: Any) -> str:
    """The ``data-v`` a cell sorts by: numbers as numbers, the rest as text ("" sorts last)."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (int, float)) and math.isfinite(v):
        return repr(float(v))
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return repr(float(min(v)))
    return "" if v is None else fmt(v)


def kv_table(obj: dict[str, Any], *, css: str = "kv") -> str:
    """Nested objects as a two-column table with dotted keys."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append((prefix, value))

    walk("", obj)
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_long(v))}</td></tr>" for k, v in rows)
    return f'<table class="{css}"><tbody>{body}</tbody></table>'


def _long(v: Any) -> str:
    if isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
        return json.dumps(v)[:400]
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return fmt(v)


def flatten(sample: dict[str, Any]) -> dict[str, Any]:
    """One sample as flat columns: nested objects as dotted keys; lists of objects left out."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any, depth: int) -> None:
        if isinstance(value, dict) and depth < 3:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        elif isinstance(value, list) and any(isinstance(x, (dict, list)) for x in value):
            return  # e.g. saliency's top pixels: shown as derived columns or images instead
        else:
            out[prefix] = value

    walk("", sample, 0)
    return out


def columns_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, None)
    return list(cols)


def sortable_table(rows: list[dict[str, Any]], *, table_id: str, caption: str = "", columns: list[str] | None = None) -> str:
    """A table the page's script sorts by any column (click a header; again to reverse)."""
    if not rows:
        return '<p class="muted">No per-input rows.</p>'
    cols = columns or columns_of(rows)
    head = "".join(f'<th scope="col" aria-sort="none" title="sort by {escape(c)}">{escape(c)}</th>' for c in cols)
    body = []
    for r in rows:
        cells = "".join(f'<td data-v="{escape(sort_key(r.get(c)))}">{escape(fmt(r.get(c)))}</td>' for c in cols)
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table class="sortable" id="{escape(table_id)}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')
