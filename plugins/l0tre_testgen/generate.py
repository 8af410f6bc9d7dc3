"""Test cases of one input from the L0-TRE search: at each level t = 1..T, the assignment the sweep
found to flip the label (if any) and the cumulative-union witness after tightening."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from l0tre_core import SearchContext, Witness, flips


@dataclass
class TestCase:
    """One adversarial test case: the changed pixels, verified to flip the model's label."""

    __test__ = False  # not a pytest test class, whatever its name

    level: int  # the t whose sweep produced it
    source: str  # "sweep" (a flipping t-subset assignment), "union" (cumulative union, tightened) or "targeted" (toward one class)
    witness: Witness
    label_new: int

    @property
    def l0(self) -> int:
        return self.witness.size


def generate(ctx: SearchContext, max_t: int, per_input: int, deadline: float | None = None) -> list[TestCase]:
    """Up to ``per_input`` distinct verified test cases for the input in ``ctx``, smallest levels first.

    A level whose sweep ran out of time still offers the union of the subsets it ranked. When the
    levels give fewer than ``per_input``, targeted cases (one per other class) make up the rest.
    """
    cases: list[TestCase] = []
    seen: set[tuple[bytes, bytes]] = set()
    for t in range(1, max_t + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        step = ctx.level(t, deadline)
        candidates = [(source, w) for source, w in (("sweep", step.flip), ("union", step.union())) if w is not None]
        for source, w in candidates:
            key = (w.units.tobytes(), w.values.tobytes())
            if key in seen:
                continue
            seen.add(key)
            out = ctx.classifier.outputs(ctx.units_image(w.apply(ctx.x_units))[None])
            cases.append(TestCase(t, source, w, int(np.argmax(out[0]))))
            if len(cases) >= per_input:
                return cases
    if len(cases) < per_input and not (deadline is not None and time.monotonic() > deadline):
        cases += targeted_cases(ctx, per_input - len(cases), seen, deadline)
    return cases


def targeted_cases(ctx: SearchContext, need: int, seen: set[tuple[bytes, bytes]], deadline: float | None = None,
                   k_max: int = 64) -> list[TestCase]:
    """Up to ``need`` more cases, one per other class, closest class first: the t = 1 sensitivity
    toward class j (how far one pixel alone, at a value of V, closes the gap between the reference
    logit and j's) ranks the pixels; the shortest prefix of that ranking that flips the label is
    tightened and verified. Distinct from the untargeted union, so an input yields several cases."""
    values = ctx.values
    n, nv = ctx.encoder.n_units, len(values)
    units = np.repeat(np.arange(n, dtype=np.int64), nv)[:, None]
    vals = np.tile(values, (n, 1))[:, None, :]
    step = max(1, ctx.chunk)
    out = np.concatenate([ctx.run_changes(units[i : i + step], vals[i : i + step]) for i in range(0, len(units), step)])
    clean = ctx.classifier.outputs(ctx.units_image(ctx.x_units)[None])[0].astype(np.float64)
    others = [int(j) for j in np.argsort(-clean, kind="stable") if j != ctx.ref]
    cases: list[TestCase] = []
    for j in others:
        if len(cases) >= need or (deadline is not None and time.monotonic() > deadline):
            break
        drop = ((clean[ctx.ref] - clean[j]) - (out[:, ctx.ref] - out[:, j]).astype(np.float64)).reshape(n, nv)
        arg = drop.argmax(axis=1)
        best = drop[np.arange(n), arg]
        order = np.argsort(-best, kind="stable")
        order = order[best[order] > 0][:k_max]
        if not len(order):
            continue
        prefixes = np.repeat(ctx.x_units[None], len(order), axis=0)
        for k in range(len(order)):
            prefixes[k:, order[k]] = values[arg[order[k]]]
        flipped = np.flatnonzero(flips(ctx.classifier.outputs(np.stack([ctx.units_image(p) for p in prefixes])), ctx.ref))
        if not len(flipped):
            continue
        w = ctx.tighten(Witness.between(ctx.x_units, prefixes[int(flipped[0])]))
        key = (w.units.tobytes(), w.values.tobytes())
        if key in seen or not ctx.verify(w):
            continue
        seen.add(key)
        label = int(np.argmax(ctx.classifier.outputs(ctx.units_image(w.apply(ctx.x_units))[None])[0]))
        cases.append(TestCase(1, "targeted", w, label))
    return cases
