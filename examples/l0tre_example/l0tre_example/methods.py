"""The example's two bound methods.

- ``grid3`` (lower, guarantee ``discrete``): every change of exactly t units to the values
  {lo, (lo+hi)/2, hi} per channel, enumerated completely. Like the built-in ``discrete``
  enumeration, but with the mid-grey level too, and written with nothing but
  ``SearchContext.run_changes``.
- ``greedy-drop`` (upper): shrinks the current witness one unit at a time. For each changed unit
  it restores that unit and, when the image no longer flips on its own, also tries giving one of
  the other changed units another value of V. Every smaller witness is checked with
  ``SearchContext.verify`` before it is used.

Both objects are plain classes: the contracts (``LowerBoundMethod``, ``Certifier``,
``UpperBoundMethod`` in ``l0tre_core``) are Protocols, checked by their attributes when the
method is registered, so nothing needs to be inherited.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np

from l0tre_core import Certificate, Witness, flips

VERIFY_TRIES = 4  # flipping candidates re-run through verify per dropped unit before moving on


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


# --- grid3: a lower-bound method ------------------------------------------------------------------


class Grid3:
    """The ``grid3`` lower-bound method (a ``LowerBoundMethod``)."""

    name = "grid3"
    kind = "lower"
    guarantee = "discrete"  # its proofs hold for changed units taking grid values only
    description = "complete enumeration of every t-subset with values {lo, (lo+hi)/2, hi} per channel"

    def unsupported(self, classifier: Any) -> str | None:
        return None  # needs nothing but model evaluations: any classifier will do

    def prepare(self, classifier: Any, x: np.ndarray, threat: Any, seed: int) -> "Grid3Certifier":
        return Grid3Certifier(threat)


class Grid3Certifier:
    """``grid3`` prepared for one run (a ``Certifier``)."""

    def __init__(self, threat: Any) -> None:
        self.threat = threat
        lo, hi = float(threat.lo), float(threat.hi)
        self.levels = np.array([lo, (lo + hi) / 2, hi], np.float32)

    def refusal(self) -> str | None:
        # The run states its value set V (--values); a discrete bound is read as "no change over V
        # flips the label", so it must cover V. {lo, mid, hi} covers corners, grid:2 and grid:3.
        run_levels = np.asarray(self.threat.levels(), np.float32)
        missing = [float(v) for v in run_levels if not np.any(self.levels == v)]
        if missing:
            return (f"grid3 enumerates {{lo, (lo+hi)/2, hi}} per channel, which does not contain every value of "
                    f"--values {self.threat.values} (missing {', '.join(f'{v:g}' for v in missing[:3])})")
        return None

    def unit_values(self, channels: int) -> np.ndarray:
        """Every value one unit may take: all combinations of the levels over its channels."""
        return np.array(list(itertools.product(self.levels, repeat=channels)), np.float32).reshape(-1, channels)

    def certify(self, ctx: Any, t: int, deadline: float | None) -> Certificate:
        n, channels = ctx.encoder.n_units, ctx.encoder.channels
        values = self.unit_values(channels)  # [G, Cu]
        digits = np.array(list(itertools.product(range(len(values)), repeat=t)), np.int64).reshape(-1, t)
        assignments = values[digits]  # [A, t, Cu]: every assignment of grid values to t units
        per_subset = len(assignments)
        step = max(1, ctx.chunk // per_subset)  # subsets per model call group
        subsets = itertools.combinations(range(n), t)
        total, done = math.comb(n, t), 0
        while True:
            block = np.array(list(itertools.islice(subsets, step)), np.int64).reshape(-1, t)
            if not len(block):
                return Certificate("proven", detail=f"{total} subsets x {per_subset} assignments")
            units = np.repeat(block, per_subset, axis=0)  # [m*A, t]
            vals = np.tile(assignments, (len(block), 1, 1))  # [m*A, t, Cu]
            hit = flips(ctx.run_changes(units, vals), ctx.ref)  # NaN rows are never flips
            if hit.any():
                i = int(np.argmax(hit))
                # A grid value may equal the clean value: recount the units that really change,
                # or the engine's verification (which recounts) would refuse the witness.
                adv = Witness(units[i].copy(), vals[i].copy()).apply(ctx.x_units)
                return Certificate("refuted", Witness.between(ctx.x_units, adv), detail="a grid assignment flips the label")
            done += len(block)
            if done < total and _past(deadline):
                return Certificate("timeout", detail=f"{done} of {total} subsets enumerated before the deadline")


# --- greedy-drop: an upper-bound method -----------------------------------------------------------


class GreedyDrop:
    """The ``greedy-drop`` upper-bound method (an ``UpperBoundMethod``)."""

    name = "greedy-drop"
    kind = "upper"
    description = "drops one changed unit of the witness at a time, re-tuning one other unit over V when needed"

    def improve(self, ctx: Any, state: Any, t: int, deadline: float | None, rng: np.random.Generator) -> Witness | None:
        best = state.witness
        if best is None or best.size <= 1:
            return None  # nothing to shrink (a witness of one unit is as small as a flip gets)
        current = best
        while current.size > 1 and not _past(deadline):
            smaller = self.drop_one(ctx, current, rng, deadline)
            if smaller is None:
                break
            current = smaller
        return current if current.size < best.size else None

    @staticmethod
    def drop_one(ctx: Any, w: Witness, rng: np.random.Generator, deadline: float | None) -> Witness | None:
        """A verified witness with fewer units than ``w``, or None."""
        k = w.size
        for i in rng.permutation(k):  # random order: repeated calls explore differently
            if _past(deadline):
                return None
            keep_units = np.delete(w.units, i)  # [k-1]
            keep_values = np.delete(w.values, i, axis=0)  # [k-1, Cu]
            # row 0: the plain drop; then every other changed unit j set to every value of V
            rows = [keep_values]
            for j in range(k - 1):
                for v in ctx.values:
                    moved = keep_values.copy()
                    moved[j] = v
                    rows.append(moved)
            values = np.stack(rows)  # [B, k-1, Cu]
            units = np.repeat(keep_units[None], len(values), axis=0)  # [B, k-1]
            hit = np.flatnonzero(flips(ctx.run_changes(units, values), ctx.ref))
            for row in hit[:VERIFY_TRIES]:
                adv = Witness(keep_units, values[row]).apply(ctx.x_units)
                candidate = Witness.between(ctx.x_units, adv)
                if candidate.size < k and ctx.verify(candidate):
                    return candidate
        return None
