"""Concrete checks and attacks of the search (a mixin of ``_Search``, ``certify/split.py``).

- ``check``/``valid``: evaluate candidate inputs, keep a verified witness (a member of the L0 set
  with margin below ``-WITNESS_TOL`` whose argmax is not ``ref``);
- ``_attack_single``: every corner of every single-pixel box (up to ``MAX_CORNERS`` per box);
- ``_attack_beam``: a beam search over corner assignments of up to ``t`` sensitive pixels.

The tuning constants are read through ``certify/search.py`` (``knobs``) when used.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from l0tre_core.certify import search as knobs
from l0tre_core.certify.boxes import Boxes
from l0tre_core.certify.search import margins

BEAM_CHUNK = 512  # beam points per model call between deadline checks

if TYPE_CHECKING:
    from l0tre_core.certify.network import Network
    from l0tre_core.certify.problem import Problem
    from l0tre_core.certify.search import _Timer


class _Attacks:
    """Needs ``prob``, ``net``, ``ref``, ``t``, ``timer`` and ``witness``."""

    prob: Problem
    net: Network
    ref: int
    t: int
    timer: _Timer
    witness: np.ndarray | None

    def _pixel_boxes(self, pixels: np.ndarray) -> Boxes:
        """One box per pixel: its scalars free in their range, everything else at x0."""
        prob = self.prob
        S = prob.pixel_scalars[pixels]
        real = S >= 0
        Sc = np.where(real, S, 0)
        dlo = np.where(real, prob.lo[Sc] - prob.x0[Sc], 0.0)
        dhi = np.where(real, prob.hi[Sc] - prob.x0[Sc], 0.0)
        return Boxes(np.where(real, S, -1), dlo, dhi, np.zeros(len(pixels), dtype=np.int64))

    # -- concrete checks --------------------------------------------------------------------------
    def check(self, x: np.ndarray) -> bool:
        """Evaluate candidate inputs; keep a verified witness. True when one was found."""
        if x.shape[0] == 0:
            return False
        x = x[self.valid(x)]
        if x.shape[0] == 0:
            return False
        m = margins(self.net, self.ref, x)
        i = int(np.argmin(m))
        if m[i] < -knobs.WITNESS_TOL:
            w = x[i].copy()
            z = self.net.forward(w[None])[0]
            if int(np.argmax(z)) != self.ref:
                self.witness = w
                return True
        return False

    def valid(self, x: np.ndarray) -> np.ndarray:
        """Rows that are members of the L0 set: at most t changed pixels, every scalar of a
        changed pixel inside [lo, hi]."""
        prob = self.prob
        changed = x != prob.x0  # [N, D]
        inside = (x >= prob.lo) & (x <= prob.hi)
        pix_changed = prob.to_pixels(changed.astype(np.float64)) > 0  # [N, P]
        pix_bad = prob.to_pixels((~inside).astype(np.float64)) > 0
        return (pix_changed.sum(axis=1) <= self.t) & ~(pix_changed & pix_bad).any(axis=1)

    # -- attacks ---------------------------------------------------------------------------------
    def _corner_offsets(self, boxes: Boxes, limit: int | None = None) -> list[np.ndarray]:
        limit = knobs.MAX_CORNERS if limit is None else limit
        f = boxes.S.shape[1]
        if 2**f <= limit:
            combos = list(itertools.product((0, 1), repeat=f))
        else:
            rng = np.random.default_rng(f)
            combos = [tuple(rng.integers(0, 2, f)) for _ in range(limit)]
        out = []
        for c in combos:
            sel = np.array(c, dtype=bool)[None, :]
            out.append(np.where(sel, boxes.dhi, boxes.dlo))
        return out

    def _attack_single(self) -> tuple[bool, np.ndarray]:
        """All corners of every single-pixel box; returns (found, per-pixel best margin)."""
        prob = self.prob
        boxes = self._pixel_boxes(np.arange(prob.P))
        best = np.full(prob.P, np.inf)
        for off in self._corner_offsets(boxes):
            x = boxes.points(prob, off)
            m = margins(self.net, self.ref, x)
            best = np.minimum(best, m)
            if self.check(x):
                return True, best
        return False, best

    def _attack_beam(self, single: np.ndarray, width: int = 16, top: int = 64) -> bool:
        """Beam search over corner assignments of up to t pixels (the sensitive ones first)."""
        prob = self.prob
        cand = np.argsort(single)[: min(top, prob.P)]
        boxes = self._pixel_boxes(cand)
        offsets = self._corner_offsets(boxes)
        beam = [np.broadcast_to(prob.x0, (1, prob.x0.size)).copy()]
        beam_sets: list[frozenset[int]] = [frozenset()]
        for _ in range(self.t):
            if self.timer.out():
                return False
            xs, sets = [], []
            for x, s in zip(beam, beam_sets):
                base = x[0]
                for off in offsets:
                    pts = boxes.points(prob, off)  # [M, D] each from x0; splice onto base
                    for j, p in enumerate(cand):
                        if int(p) in s:
                            continue
                        sc = prob.pixel_scalars[p]
                        sc = sc[sc >= 0]
                        y = base.copy()
                        y[sc] = pts[j, sc]
                        xs.append(y)
                        sets.append(s | {int(p)})
            if not xs:
                return False
            X = np.stack(xs)
            # a round is thousands of points on a CNN: checked against the deadline in chunks, and
            # evaluated once (``check`` re-runs only the rows that flip)
            m = np.empty(len(X))
            for s in range(0, len(X), BEAM_CHUNK):
                if self.timer.out():
                    return False
                m[s : s + BEAM_CHUNK] = margins(self.net, self.ref, X[s : s + BEAM_CHUNK])
            if self.check(X[m < -knobs.WITNESS_TOL]):
                return True
            order = np.argsort(m)
            beam, beam_sets, seen = [], [], set()
            for i in order:
                key = (sets[i], X[i].tobytes())
                if key in seen:
                    continue
                seen.add(key)
                beam.append(X[i : i + 1])
                beam_sets.append(sets[i])
                if len(beam) >= width:
                    break
        return False

