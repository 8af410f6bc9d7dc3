"""The parts of one run's report, read from its result document and the files beside it: the
headline, the summary, the charts, the per-input table, the images, the model card, the settings
and the versions. Commands the report does not know get the same parts, found generically."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from l0tre_report.charts import Series, interval_chart, line_chart
from l0tre_report.images import (
    clean_inputs,
    file_data_uri,
    image_geometry,
    marked,
    png_data_uri,
    saliency_overlay,
    to_hwc,
    to_rgb,
    upscale,
)
from l0tre_report.runs import RunFolder
from l0tre_report.tables import flatten, fmt, kv_table, sortable_table

COMMON_KEYS = {"schema_version", "command", "versions", "model", "models", "summary", "samples"}
FIGURES = ("convergence.png", "adversarial.png", "saliency.png", "coverage.png", "design.png")  # written by the runs


def headline(run: RunFolder) -> str:
    """One sentence saying what the run found."""
    d, s = run.doc, run.doc.get("summary", {})
    n = s.get("inputs", len(d.get("samples", [])))
    inputs = f"{n} input{'' if n == 1 else 's'}"
    if run.command == "robustness":
        up = "?" if s.get("upper") is None else f"{s['upper']:.3f}"
        return (f"Global robustness over {inputs}: {s.get('lower', 0):.3f} &le; mean d* &le; {up} pixels "
                f"(lower bounds {escape(', '.join(s.get('guarantees', [])))}); {s.get('exact', 0)} inputs exact.")
    if run.command == "attack":
        med = s.get("median_l0")
        return (f"{s.get('successes', 0)} of {inputs} attacked successfully (rate {s.get('success_rate', 0):.0%}); "
                f"median L0 of the adversarial examples {'-' if med is None else fmt(med)} pixels.")
    if run.command == "saliency":
        return (f"Single-pixel saliency of {inputs}: {s.get('single_pixel_flips', 0)} flipped by one pixel alone; "
                f"{s.get('evaluations', 0):,} model evaluations in {s.get('seconds', 0):.1f} s.")
    if run.command == "testgen":
        cov = d.get("coverage") or {}
        at = cov.get("at") or {}
        tail = ""
        if cov.get("available"):
            tail = f"; {escape(str(cov.get('criterion', 'nc')).upper())} coverage {cov.get('combined', 0):.2%} with the generated tests"
            if at:
                tail += " (" + ", ".join(f"{v:.2%} at L0 &le; {k}" for k, v in at.items()) + ")"
        return f"{s.get('cases', 0)} verified test cases from {s.get('inputs_with_cases', 0)} of {inputs}{tail}."
    if run.command == "design":
        ranking = s.get("ranking", [])
        names = " &gt; ".join(escape(r["name"]) for r in ranking)
        return f"{len(ranking)} models ranked on the same {inputs}: {names} (an order; the claims below say what is proven)."
    return f"{escape(run.command)}: {inputs}."


def summary_part(run: RunFolder) -> str:
    # lists of objects (design's ranking) have their own table below
    plain = {k: v for k, v in run.doc.get("summary", {}).items() if not _bulky(v)}
    return f'<h3>Summary</h3><p class="headline">{headline(run)}</p>' + kv_table(plain)


def settings_part(run: RunFolder) -> str:
    """Threat model, data, budget and the command's other top-level keys (not its long lists)."""
    extras = {k: v for k, v in run.doc.items() if k not in COMMON_KEYS and not _bulky(v)}
    return "<h3>Run settings</h3>" + kv_table(extras)


def _bulky(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 12 or (isinstance(v, list) and any(isinstance(x, dict) for x in v))


def model_part(run: RunFolder) -> str:
    models = run.doc.get("models") or [run.doc.get("model") or {}]
    parts = ["<h3>Model card</h3>"]
    for m in models:
        if len(models) > 1:
            parts.append(f"<h4>{escape(str(m.get('name', m.get('path', 'model'))))}</h4>")
        parts.append(kv_table(m))
    return "".join(parts)


def versions_part(run: RunFolder) -> str:
    return "<h3>Versions</h3>" + kv_table(run.doc.get("versions", {}))


# --- charts ---------------------------------------------------------------------------------------


def charts_part(run: RunFolder) -> str:
    d = run.doc
    charts: list[str] = []
    if run.command == "robustness" and d.get("history"):
        hist = d["history"]
        charts.append(line_chart(
            [Series("global lower", [(h[0], h[1]) for h in hist], step=True),
             Series("global upper", [(h[0], h[2]) for h in hist if h[2] is not None], step=True, dashed=True)],
            x_label="seconds", y_label="mean pixels (d*)", title="Convergence: global bounds over time", y_min=0, x_min=0))
    if run.command == "attack" and d.get("summary", {}).get("success_at"):
        pts = [(float(k), v) for k, v in d["summary"]["success_at"].items()]
        charts.append(line_chart([Series("success rate", pts)], x_label="L0 budget (pixels, log scale)",
                                 y_label="share of inputs", title="Attack success rate against L0", y_min=0, y_max=1, x_log2=True))
    if run.command == "testgen":
        curve = (d.get("coverage") or {}).get("curve") or []
        if curve:
            charts.append(line_chart([Series(f"{str((d.get('coverage') or {}).get('criterion', 'nc')).upper()} coverage",
                                             [(c["l0"], c["coverage"]) for c in curve], step=True)],
                                     x_label="L0 budget (pixels changed per test)", y_label="coverage",
                                     title="Coverage against L0", y_max=1))
    if run.command == "saliency":
        charts.append(_saliency_chart(run))
    if run.command == "design":
        ranking = d.get("summary", {}).get("ranking", [])
        charts.append(interval_chart([(r["name"], r["lower"], r.get("upper")) for r in ranking],
                                     title="Global robustness intervals", x_label="mean pixels that must change (lower .. upper)"))
        shares = [Series(r["name"], [(t, v) for t, v in enumerate(r.get("certified_share", []), 1)]) for r in ranking]
        if any(len(s.points) > 1 for s in shares):
            charts.append(line_chart(shares, x_label="t", y_label="share proven robust", title="Share of inputs proven at each t", y_min=0, y_max=1))
    charts = [c for c in charts if c]
    return ("<h3>Charts</h3>" + "".join(f'<figure class="chartbox">{c}</figure>' for c in charts)) if charts else ""


def _saliency_chart(run: RunFolder) -> str:
    z = run.arrays("saliency.npz")
    if z is None:
        return ""
    series = []
    for idx, m in list(zip(z["index"], z["maps"]))[:8]:
        ranked = np.sort(m.ravel().astype(np.float64))[::-1][:200]
        series.append(Series(f"#{int(idx)}", [(k + 1, float(v)) for k, v in enumerate(ranked)]))
    return line_chart(series, x_label="pixel rank (most sensitive first)", y_label="score drop",
                      title="Ranked single-pixel sensitivity (top 200 pixels)")


# --- the per-input table ----------------------------------------------------------------------------


def table_part(run: RunFolder, key: str) -> str:
    rows = []
    for s in run.doc.get("samples", []):
        row = flatten(s)
        if run.command == "saliency" and s.get("top"):
            best = s["top"][0]
            row["top pixel (row,col)"] = f"({best['row']},{best['col']})"
            row["top sensitivity"] = best["sensitivity"]
        rows.append(row)
    parts = ["<h3>Per input</h3>", sortable_table(rows, table_id=f"t-{key}", caption="click a column to sort")]
    if run.command == "testgen" and run.doc.get("cases"):
        parts.append("<h4>Adversarial test cases</h4>" + sortable_table([flatten(c) for c in run.doc["cases"]], table_id=f"c-{key}"))
    if run.command == "testgen" and run.doc.get("coverage_tests"):
        parts.append("<h4>Coverage-guided tests</h4>" + sortable_table([flatten(c) for c in run.doc["coverage_tests"]], table_id=f"g-{key}"))
    if run.command == "design" and run.doc.get("claims"):
        items = "".join(f"<li>{escape(c['text'])}</li>" for c in run.doc["claims"])
        parts.insert(0, f"<h3>Claims</h3><ul class='claims'>{items}</ul>"
                        + sortable_table([flatten(r) for r in run.doc["summary"].get("ranking", [])], table_id=f"r-{key}", caption="ranking"))
    return "".join(parts)


# --- images ---------------------------------------------------------------------------------------


def images_part(run: RunFolder, data: Path | None, max_images: int) -> str:
    if run.command in ("robustness", "attack", "testgen"):
        body = _witness_images(run, data, max_images)
    elif run.command == "saliency":
        body = _saliency_images(run, data, max_images)
    else:
        body = ""
    figures = []
    for name in FIGURES:
        uri = file_data_uri(run.path / name)
        if uri:
            figures.append(f'<figure><img class="fig" alt="{escape(name)}" src="{uri}"><figcaption>{escape(name)} (written by the run)</figcaption></figure>')
    if figures:
        body += f"<details><summary>Figures the run wrote ({len(figures)})</summary>{''.join(figures)}</details>"
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in run.notes)
    return f"<h3>Images</h3>{notes}{body}" if (body or notes) else ""


def _witness_images(run: RunFolder, data: Path | None, max_images: int) -> str:
    file, key = {"robustness": ("witnesses.npz", "x_adv"), "attack": ("adversarial.npz", "x_adv"), "testgen": ("tests.npz", "x")}[run.command]
    z = run.arrays(file)
    if z is None or key not in z or not len(z[key]):
        if z is None and file not in " ".join(run.notes):
            run.notes.append(f"no {file} beside results.json: no witness images")
        return ""
    model = run.doc.get("model") or {}
    hwc = image_geometry(model)
    lo, hi = (model.get("card") or {}).get("range") or (run.doc.get("threat") or {}).get("range") or (0.0, 1.0)
    shown = slice(0, max_images)
    adv = to_hwc(z[key][shown], hwc)
    index = z["index"][shown].astype(np.int64)
    clean, why = clean_inputs(run.doc, run.path, data, index)
    if why:
        run.notes.append(why)
    by_index = {s["index"]: s for s in run.doc.get("samples", [])}
    cells = []
    for k, idx in enumerate(index):
        s = by_index.get(int(idx), {})
        caption = _witness_caption(run, s, z, k)
        panels = []
        if clean is not None:
            changed = np.any(clean[k] != adv[k], axis=-1)
            panels += [("clean", to_rgb(clean[k], (lo, hi))), ("adversarial", to_rgb(adv[k], (lo, hi))),
                       (f"{int(changed.sum())} changed", marked(to_rgb(clean[k], (lo, hi)), changed))]
        else:
            panels.append(("adversarial", to_rgb(adv[k], (lo, hi))))
            units = ((s.get("witness") or {}).get("units"))
            if units:
                changed = np.zeros(hwc[0] * hwc[1], bool)
                changed[np.asarray(units, np.int64)] = True
                panels.append((f"{len(units)} changed", marked(to_rgb(adv[k], (lo, hi)), changed.reshape(hwc[:2]))))
        imgs = "".join(f'<span class="panel"><img alt="{escape(t)} #{int(idx)}" src="{png_data_uri(upscale(p))}"><small>{escape(t)}</small></span>'
                       for t, p in panels)
        cells.append(f'<figure class="witness">{imgs}<figcaption>{escape(caption)}</figcaption></figure>')
    more = len(z[key]) - len(index)
    tail = f'<p class="muted">{more} more not shown (--max-images).</p>' if more > 0 else ""
    return f"<h4>Witnesses ({file})</h4><div class='gallery'>{''.join(cells)}</div>{tail}"


def _witness_caption(run: RunFolder, s: dict[str, Any], z: dict[str, np.ndarray], k: int) -> str:
    idx = int(z["index"][k])
    if run.command == "robustness":
        return f"#{idx}: prediction {s.get('reference', '?')}; {s.get('lower', '?')} <= d* <= {s.get('upper', '?')} ({s.get('guarantee', '?')})"
    if run.command == "attack":
        return f"#{idx}: {s.get('reference', '?')} -> {s.get('adversarial_label', '?')} with L0 = {s.get('l0', '?')} ({s.get('found_by', '?')})"
    kind = f" ({z['kind'][k]})" if "kind" in z else ""
    return f"#{idx}{kind}: label {int(z['label_clean'][k])} -> {int(z['label_new'][k])} with L0 = {int(z['l0'][k])}"


def _saliency_images(run: RunFolder, data: Path | None, max_images: int) -> str:
    z = run.arrays("saliency.npz")
    if z is None:
        run.notes.append("no saliency.npz beside results.json: no saliency overlays")
        return ""
    model = run.doc.get("model") or {}
    lo, hi = (model.get("card") or {}).get("range") or (0.0, 1.0)
    maps = z["maps"][:max_images].astype(np.float64)
    index = z["index"][:max_images].astype(np.int64)
    clean, why = clean_inputs(run.doc, run.path, data, index)
    if why:
        run.notes.append(why)
    finite = maps[np.isfinite(maps)]
    vmin, vmax = (min(0.0, float(finite.min())), float(finite.max())) if finite.size else (0.0, 1.0)
    cells = []
    for k, idx in enumerate(index):
        grey = None if clean is None else to_rgb(clean[k], (lo, hi))
        over = saliency_overlay(grey, maps[k], vmin, vmax)
        flips = int(z["flips"][k].sum()) if "flips" in z else 0
        cap = f"#{int(idx)}: prediction {int(z['reference'][k])}; max drop {maps[k].max():.3g}" + (f"; {flips} pixels flip it alone" if flips else "")
        cells.append(f'<figure class="witness"><span class="panel"><img alt="saliency #{int(idx)}" src="{png_data_uri(upscale(over))}"></span>'
                     f'<figcaption>{escape(cap)}</figcaption></figure>')
    bar = _magma_bar(vmin, vmax, (run.doc.get("threat") or {}).get("score", "score"))
    return f"<h4>Saliency overlays (saliency.npz, one colour scale)</h4>{bar}<div class='gallery'>{''.join(cells)}</div>"


def _magma_bar(vmin: float, vmax: float, score: str) -> str:
    from matplotlib import colormaps

    stops = ", ".join("rgb({},{},{}) {}%".format(*(int(c * 255) for c in colormaps["magma"](i / 8)[:3]), int(i * 12.5)) for i in range(9))
    return (f'<div class="cbar"><span>{vmin:.3g}</span><span class="grad" style="background: linear-gradient(to right, {stops})"></span>'
            f'<span>{vmax:.3g}</span> <small>{escape(score)} drop when the pixel alone takes its worst value</small></div>')
