"""``saliency.png``: each input beside its saliency map (jet colours, as the original L0-TRE)."""

from __future__ import annotations

import math

import numpy as np

from l0tre_core import png, pyplot

MAX_SHOWN = 16
PER_ROW = 4  # inputs per row of the grid (two panels each)


def saliency_png(images: np.ndarray, maps: np.ndarray, titles: list[str], value_range: tuple[float, float]) -> bytes:
    """PNG bytes for up to 16 inputs: ``images [N, H, W, C]`` (data space), ``maps [N, H, W]``."""
    n = min(len(images), MAX_SHOWN)
    cols = min(n, PER_ROW) if n else 1
    rows = max(1, math.ceil(n / cols))
    fig, axes = pyplot().subplots(rows, 2 * cols, figsize=(2.4 * 2 * cols, 2.6 * rows), dpi=100, squeeze=False)
    lo, hi = value_range
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax_img, ax_map = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        img = images[i]
        if img.shape[-1] == 1:
            ax_img.imshow(img[..., 0], cmap="gray", vmin=lo, vmax=hi)
        else:
            # imshow wants RGB in [0, 1]; only the first three channels can be shown
            ax_img.imshow(np.clip((img[..., :3] - lo) / (hi - lo), 0, 1))
        ax_img.set_title(titles[i], fontsize=8)
        im = ax_map.imshow(maps[i], cmap="jet")
        ax_map.set_title("sensitivity", fontsize=8)
        fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return png(fig)
