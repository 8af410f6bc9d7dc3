"""``design.png``: the global lower and upper bound of each model, side by side."""

from __future__ import annotations

import numpy as np

from l0tre_core import png, pyplot
from l0tre_design.compare import ModelBounds


def design_png(models: list[ModelBounds]) -> bytes:
    n = len(models)
    x = np.arange(n)
    width = 0.38
    fig, ax = pyplot().subplots(figsize=(max(4.5, 1.5 * n + 2), 3.8), dpi=100)
    lows = [m.lower for m in models]
    ups = [0.0 if m.upper is None else m.upper for m in models]
    bars_lo = ax.bar(x - width / 2, lows, width, label="global lower bound", color="#4c72b0")
    bars_up = ax.bar(x + width / 2, ups, width, label="global upper bound (witnessed)", color="#dd8452")
    for bar, m in zip(bars_lo, models):
        ax.annotate(f"{m.lower:.2f}\n{m.guarantee}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    for bar, m in zip(bars_up, models):
        label = "no witness" if m.upper is None else f"{m.upper:.2f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [m.name for m in models], rotation=15 if n > 3 else 0)
    ax.set_ylabel("mean L0 distance (pixels)")
    ax.set_title("global robustness: same inputs, same budget", fontsize=10)
    top = max([*lows, *ups, 1.0])
    ax.set_ylim(0, top * 1.25)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png(fig)
