"""The L0-TRE saliency map of one input: the t = 1 subspace sensitivity of every pixel.

Sensitivity of pixel p = score(x) - min over v in V of score(x[p <- v]): how far the score (the
margin, or the reference logit) drops when that one pixel alone takes its worst value in V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from l0tre_core import SearchContext, score
from l0tre_core import flips as flips_of


@dataclass
class SaliencyMap:
    """Per-pixel results for one input, indexed by pixel (row-major over the image)."""

    sensitivity: np.ndarray  # [P] float64, score drop; negative when every value in V raises the score
    worst: np.ndarray  # [P, C] float32, the value of V that minimises the score (data space)
    flips: np.ndarray  # [P] bool, some value of V at this pixel alone changes the top-1 class
    clean_score: float
    evaluations: int

    def top(self, k: int) -> np.ndarray:
        """The k most sensitive pixels, most sensitive first (ties: lower pixel index first)."""
        order = np.lexsort((np.arange(len(self.sensitivity)), -self.sensitivity))
        return order[:k]


def saliency_map(ctx: SearchContext) -> SaliencyMap:
    """The full t = 1 map of the input prepared in ``ctx``.

    The engine's sweep(1), asked to keep every pixel, ranks them all unless it meets a flipping
    assignment: then it stops and returns only the chunks before that one. The pixels it did not
    return are evaluated here the same way, so the map is always complete and exact.
    """
    clf = ctx.classifier
    evals0 = clf.evaluations
    n, channels = ctx.encoder.n_units, ctx.encoder.channels
    sens = ctx.sweep(1, None, top_k=n)
    sensitivity = np.zeros(n, np.float64)
    worst = np.zeros((n, channels), np.float32)
    flips = np.zeros(n, bool)  # the sweep keeps only subsets from chunks where nothing flipped
    have = sens.subsets[:, 0]
    sensitivity[have] = sens.sensitivity
    worst[have] = sens.values[:, 0]
    missing = np.setdiff1d(np.arange(n), have)
    if len(missing):
        s, w, f = single_pixel_scores(ctx, missing)
        sensitivity[missing] = ctx.clean_score - s
        worst[missing] = w
        flips[missing] = f
    return SaliencyMap(sensitivity, worst, flips, ctx.clean_score, clf.evaluations - evals0)


def single_pixel_scores(ctx: SearchContext, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel: the minimum score over V, the minimising value, and whether any value flips.

    Same batches, same V order and same argmin tie-break as the sweep, so both halves of a map agree.
    """
    values = ctx.values  # [V, C]
    nv = len(values)
    step = max(1, ctx.chunk // nv)
    mins, worst, flips = [], [], []
    for i in range(0, len(pixels), step):
        chunk = pixels[i : i + step]
        m = len(chunk)
        units = np.repeat(chunk, nv)[:, None]  # [m*V, 1]
        vals = np.tile(values, (m, 1))[:, None, :]  # [m*V, 1, C]
        out = ctx.run_changes(units, vals)
        s = score(out, ctx.ref, ctx.threat.score, ctx.probs).reshape(m, nv)
        arg = s.argmin(axis=1)
        mins.append(s[np.arange(m), arg])
        worst.append(values[arg])
        flips.append(flips_of(out, ctx.ref).reshape(m, nv).any(axis=1))  # NaN rows are no flip, as in the engine
    return np.concatenate(mins), np.concatenate(worst), np.concatenate(flips)


def image_shape(geometry: Any) -> tuple[int, int]:
    """(H, W) of the map: the model's image shape, or one row of pixels for a non-square flat input."""
    return tuple(geometry.image_shape) if geometry.image_shape else (1, geometry.n_pixels)  # type: ignore[return-value]
