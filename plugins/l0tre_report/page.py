"""The whole page: inline CSS and script, a comparison when there are several runs, then one
section per run. Nothing is fetched when the page is viewed."""

from __future__ import annotations

import datetime
from html import escape
from pathlib import Path

from l0tre_report.charts import Series, line_chart
from l0tre_report.runs import RunFolder
from l0tre_report.sections import (
    charts_part,
    headline,
    images_part,
    model_part,
    settings_part,
    summary_part,
    table_part,
    versions_part,
)
from l0tre_report.tables import sortable_table

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#c8d3df}
nav{padding:6px 24px;background:#e7ebf0}nav a{margin-right:14px;color:#1f4f82}
main{padding:8px 24px 40px;max-width:1280px}section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:6px 18px 16px;margin:16px 0}
h2{font-size:18px;margin:12px 0 4px}h3{font-size:15px;margin:18px 0 6px;border-bottom:1px solid #eee}h4{font-size:13px;margin:12px 0 4px}
.headline{font-size:15px;background:#eef5fb;padding:8px 10px;border-left:4px solid #1f6fb2}
table{border-collapse:collapse;font-size:12.5px}td,th{padding:3px 8px;border-bottom:1px solid #edf0f3;text-align:left;vertical-align:top}
table.kv th{font-weight:600;color:#45505c;white-space:nowrap}table.kv td{max-width:760px;overflow-wrap:anywhere}
table.sortable th{cursor:pointer;background:#f0f3f6;position:sticky;top:0;white-space:nowrap;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
table.sortable td{font-variant-numeric:tabular-nums;white-space:nowrap}table.sortable tr:hover td{background:#f7fafc}
caption{caption-side:top;text-align:left;color:#77818c;font-size:12px;padding:2px 0}
.scroll{max-height:460px;overflow:auto;border:1px solid #e3e7ec}
.chart{max-width:100%;height:auto;background:#fff}.chart .tick{font-size:11px;fill:#555}.chart .axis{font-size:12px;fill:#333}.chart .legend{font-size:12px;fill:#222}
figure{margin:6px 0}.chartbox{display:inline-block;margin-right:12px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.witness{border:1px solid #e3e7ec;padding:6px;border-radius:4px;background:#fafbfc}
.panel{display:inline-flex;flex-direction:column;align-items:center;margin-right:4px}.panel img{image-rendering:pixelated;max-width:230px}
.witness figcaption{font-size:12px;color:#333;max-width:360px}img.fig{max-width:100%}
.note{color:#8a5300;background:#fff7e6;padding:4px 8px;border-radius:3px}.muted{color:#77818c}
.cbar{display:flex;align-items:center;gap:6px;font-size:12px;margin:4px 0}.grad{display:inline-block;width:220px;height:12px;border:1px solid #ccc}
ul.claims li{margin:3px 0}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('thead th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
      table.querySelectorAll('thead th').forEach(function(h){ h.setAttribute('aria-sort', 'none'); });
      th.setAttribute('aria-sort', dir);
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
        if (x === '' && y !== '') return 1;            // empty cells last, either way
        if (y === '' && x !== '') return -1;
        var nx = parseFloat(x), ny = parseFloat(y), r;
        r = (!isNaN(nx) && !isNaN(ny) && String(nx) !== 'NaN') ? nx - ny : x.localeCompare(y);
        return dir === 'ascending' ? r : -r;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def data_for(run: RunFolder, data: list[Path]) -> Path | None:
    """The ``--data`` file whose name is the data source the run recorded, if any."""
    source = str((run.doc.get("data") or {}).get("source") or "")
    return next((d for d in data if d.name == source), None)


def run_section(run: RunFolder, key: str, data: list[Path], max_images: int) -> str:
    # images first: reading the clean inputs may add notes that the section shows
    images = images_part(run, data_for(run, data), max_images)
    model = run.doc.get("model") or {}
    model_name = Path(str(model.get("path") or "")).name or ", ".join(str(m.get("name")) for m in run.doc.get("models", []))
    return (f'<section id="{key}"><h2>{escape(run.label)}: <code>l0tre {escape(run.command)}</code> '
            f'<span class="muted">({escape(model_name)}; {escape(str(run.path))})</span></h2>'
            + summary_part(run) + charts_part(run) + table_part(run, key) + images
            + model_part(run) + settings_part(run) + versions_part(run) + "</section>")


def comparison_section(runs: list[RunFolder]) -> str:
    """Several runs side by side: their headline figures, overlaid curves, per-input values."""
    rows = []
    for r in runs:
        s = r.doc.get("summary", {})
        model = r.doc.get("model") or {}
        row = {"run": r.label, "command": r.command, "model": Path(str(model.get("path") or "-")).name,
               "inputs": s.get("inputs")}
        for k, v in s.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k != "inputs":
                row[k] = v
        cov = r.doc.get("coverage") or {}
        if cov.get("available"):
            row["coverage"] = cov.get("combined")
        rows.append(row)
    parts = ['<section id="comparison"><h2>Comparison</h2>',
             "<ul>" + "".join(f"<li><a href='#run-{i}'>{escape(r.label)}</a>: {headline(r)}</li>" for i, r in enumerate(runs, 1)) + "</ul>",
             sortable_table(rows, table_id="compare", caption="one row per run")]
    curves: list[Series] = []
    for r in runs:
        if r.command == "robustness" and r.doc.get("history"):
            curves.append(Series(f"{r.label} lower", [(h[0], h[1]) for h in r.doc["history"]], step=True))
            curves.append(Series(f"{r.label} upper", [(h[0], h[2]) for h in r.doc["history"] if h[2] is not None], step=True, dashed=True))
    if curves:
        parts.append(line_chart(curves, x_label="seconds", y_label="mean pixels (d*)", title="Convergence of the robustness runs", y_min=0, x_min=0))
    per: dict[tuple[str, int], dict[str, object]] = {}  # inputs are the same only in the same data
    for r in runs:
        source = str((r.doc.get("data") or {}).get("source") or "-")
        for s in r.doc.get("samples", []):
            cell = per.setdefault((source, int(s["index"])), {"data": source, "index": int(s["index"])})
            if r.command == "robustness":
                cell[f"{r.label} lower"], cell[f"{r.label} upper"] = s.get("lower"), s.get("upper")
            elif r.command == "attack":
                cell[f"{r.label} L0"] = s.get("l0")
            elif r.command == "saliency":
                cell[f"{r.label} max drop"] = (s.get("top") or [{}])[0].get("sensitivity")
            elif r.command == "testgen":
                cell[f"{r.label} cases"] = s.get("cases")
    if per and len(runs) > 1:
        parts.append("<h3>Per input, across runs</h3>" + sortable_table([per[k] for k in sorted(per)], table_id="compare-inputs",
                                                                         caption="an input is the same across runs only in the same data"))
    parts.append("</section>")
    return "".join(parts)


def render(runs: list[RunFolder], *, data: list[Path] | None = None, max_images: int = 16) -> str:
    sections = [run_section(r, f"run-{i}", list(data or []), max_images) for i, r in enumerate(runs, 1)]
    title = f"l0tre report: {runs[0].label}" if len(runs) == 1 else f"l0tre report: {len(runs)} runs compared"
    nav = "".join(f"<a href='#run-{i}'>{escape(r.label)} ({escape(r.command)})</a>" for i, r in enumerate(runs, 1))
    if len(runs) > 1:
        nav = "<a href='#comparison'>comparison</a>" + nav
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><p>Written {when} from {len(runs)} result folder{'s' if len(runs) > 1 else ''}; "
            "self-contained: it needs no network.</p></header>"
            f"<nav>{nav}</nav><main>{comparison_section(runs) if len(runs) > 1 else ''}{''.join(sections)}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")
