"""Line charts as inline SVG (no script, no library, no network): the convergence of a robustness
run, an attack's success rate against L0, testgen's coverage against L0, ranked saliency.

A chart is a list of ``Series`` (named points, drawn as lines with markers, or as steps for values
that hold until the next point); axes get round ticks; each series is named in a legend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f6fb2", "#d1495b", "#2a9d8f", "#e9a03b", "#6a4c93", "#5c677d", "#8ab17d", "#b5179e")
W, H = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 62, 150, 16, 46


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    step: bool = False  # a value holds until the next point (anytime bounds)
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 and abs(v) < 1e6 else f"{v:.3g}"


def line_chart(series: list[Series], *, x_label: str, y_label: str, title: str, y_min: float | None = None,
               y_max: float | None = None, x_min: float | None = None, x_log2: bool = False) -> str:
    """An ``<svg>`` element (a string) with one line per series; empty series are left out."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return f'<p class="muted">{escape(title)}: no points to draw.</p>'
    fx = (lambda v: math.log2(max(v, 1e-12))) if x_log2 else (lambda v: v)
    xs = [fx(x) for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points if math.isfinite(y)]
    x0, x1 = min(xs), max(xs)
    if x_min is not None:
        x0 = min(x0, fx(x_min))
    if x1 <= x0:
        x1 = x0 + 1
    y0 = min(ys) if y_min is None else y_min
    y1 = max(ys) if y_max is None else y_max
    yt = nice_ticks(y0, y1)
    y0, y1 = min(y0, yt[0]), max(y1, yt[-1])
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (fx(x) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>',
             f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>']
    for t in yt:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    if x_log2:
        xt = sorted({x for s in drawn for x, _ in s.points})
    else:
        xt = [t for t in nice_ticks(x0, x1) if x0 - 1e-9 <= t <= x1 + 1e-9]
    for t in xt:
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}" stroke="#888"/>'
                     f'<text x="{px(t):.1f}" y="{TOP + ph + 17}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{H - 8}" text-anchor="middle" class="axis">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(15 {TOP + ph / 2}) rotate(-90)" text-anchor="middle" class="axis">{escape(y_label)}</text>')
    for i, s in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(px(x), py(y)) for x, y in s.points if math.isfinite(y)]
        if s.step:
            path = []
            for k, (x, y) in enumerate(pts):
                path.append(f"{x:.1f},{pts[k - 1][1]:.1f} {x:.1f},{y:.1f}" if k else f"{x:.1f},{y:.1f}")
            coords = " ".join(path)
        else:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in pts[:200]:  # markers only where they stay readable
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{colour}"/>')
        ly = TOP + 14 + 18 * i
        parts.append(f'<line x1="{W - RIGHT + 12}" x2="{W - RIGHT + 32}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dash}/>'
                     f'<text x="{W - RIGHT + 36}" y="{ly}" class="legend">{escape(s.name[:22])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def interval_chart(rows: list[tuple[str, float, float | None]], *, title: str, x_label: str) -> str:
    """Horizontal intervals [lower, upper] per named row (design): an open end reads "no witness"."""
    if not rows:
        return ""
    finite = [v for _, lo, up in rows for v in (lo, up) if v is not None]
    hi_all = max(finite) * 1.08 if finite else 1.0
    ticks = nice_ticks(0.0, hi_all)
    x1 = ticks[-1]
    row_h, top = 30, 12
    h = top + row_h * len(rows) + 40
    pw = W - 170 - 20

    def px(v: float) -> float:
        return 170 + v / x1 * pw

    parts = [f'<svg class="chart" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for t in ticks:
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{h - 34}" stroke="#eee"/>'
                     f'<text x="{px(t):.1f}" y="{h - 20}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    for i, (name, lo, up) in enumerate(rows):
        y = top + row_h * i + row_h / 2
        colour = PALETTE[i % len(PALETTE)]
        end = px(up) if up is not None else px(x1)
        dash = "" if up is not None else ' stroke-dasharray="4 3"'
        parts.append(f'<text x="162" y="{y + 4:.1f}" text-anchor="end" class="legend">{escape(name[:24])}</text>'
                     f'<line x1="{px(lo):.1f}" x2="{end:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="8"{dash} stroke-linecap="butt" opacity="0.8"/>'
                     f'<text x="{px(lo) - 3:.1f}" y="{y - 7:.1f}" text-anchor="end" class="tick">{lo:.2f}</text>'
                     f'<text x="{end + 3:.1f}" y="{y - 7:.1f}" class="tick">{"?" if up is None else f"{up:.2f}"}</text>')
    parts.append(f'<text x="{170 + pw / 2}" y="{h - 4}" text-anchor="middle" class="axis">{escape(x_label)}</text></svg>')
    return "".join(parts)
