"""``saliency.png``: each input with its saliency map laid over it.

The map (a perceptually uniform colour map, ``magma``) is drawn half-transparent over the input
in grey, so the sensitive pixels are seen where they are on the image. By default every panel
shares ONE colour scale (one labelled colour bar), so maps can be compared across inputs;
``scale="per-panel"`` gives each map its own range and colour bar (its detail, not comparable).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np

from l0tre_core import png, pyplot

MAX_SHOWN = 16
PER_ROW = 4  # inputs per row of the grid
CMAP = "magma"
ALPHA = 0.65  # of the map over the grey input
SCALES = ("shared", "per-panel")


def colour_ranges(maps: np.ndarray, scale: str = "shared") -> list[tuple[float, float]]:
    """The (vmin, vmax) of each map's colours: one range for all (``shared``), or each its own."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    maps = np.asarray(maps, np.float64)

    def span(values: np.ndarray) -> tuple[float, float]:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return 0.0, 1.0
        lo, hi = min(0.0, float(finite.min())), float(finite.max())
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    if scale == "shared":
        return [span(maps)] * len(maps)
    return [span(m) for m in maps]


def _grey(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The input as grey levels in [0, 1] (colour inputs: the mean of their channels)."""
    g = (np.asarray(img, np.float64) - lo) / max(hi - lo, 1e-12)
    return np.clip(g.mean(axis=-1), 0, 1)


def saliency_png(images: np.ndarray, maps: np.ndarray, titles: list[str], value_range: tuple[float, float],
                 *, scale: str = "shared", score: str = "margin") -> bytes:
    """PNG bytes for up to 16 inputs: ``images [N, H, W, C]`` (data space), ``maps [N, H, W]``."""
    n = min(len(images), MAX_SHOWN)
    ranges = colour_ranges(maps[:n], scale)
    cols = min(n, PER_ROW) if n else 1
    rows = max(1, math.ceil(n / cols))
    h, w = (maps.shape[1], maps.shape[2]) if n else (1, 1)
    aspect = w / h if h else 1.0
    panel = 2.6 if scale == "shared" else 3.1
    fig, axes = pyplot().subplots(rows, cols, figsize=(panel * cols * min(max(aspect, 0.6), 2.5) + 1.2, panel * rows + 1.0),
                                  dpi=110, squeeze=False, layout="constrained")
    lo, hi = value_range
    label = f"{score} drop when the pixel takes its worst value in V"
    for ax in axes.ravel():
        ax.axis("off")
    im = None
    for i in range(n):
        ax = axes[i // cols, i % cols]
        ax.imshow(_grey(images[i], lo, hi), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        vmin, vmax = ranges[i]
        im = ax.imshow(maps[i], cmap=CMAP, vmin=vmin, vmax=vmax, alpha=ALPHA, interpolation="nearest")
        ax.set_title(titles[i], fontsize=10)
        if scale == "per-panel":
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=8)
            bar.solids.set_alpha(1.0)
    if im is not None and scale == "shared":
        bar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, pad=0.02)
        bar.set_label(label.replace(" when ", "\nwhen "), fontsize=9.5)
        bar.solids.set_alpha(1.0)  # the bar shows the colours themselves, not as blended over the image
    what = "one colour scale for all inputs" if scale == "shared" else "each map on its own colour scale: do not compare colours across panels"
    title = f"Single-pixel saliency (L0-TRE, t = 1) over the input: {what}"
    if scale == "per-panel":
        title += f"\ncolour = {label}"
    # a narrow figure (one or two panels) wraps its title rather than cutting it off
    width_in = fig.get_size_inches()[0]
    title = "\n".join(textwrap.fill(line, width=max(28, int(width_in * 12))) for line in title.split("\n"))
    fig.suptitle(title, fontsize=11)
    return png(fig)
