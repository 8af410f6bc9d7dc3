"""Test cases of one input from the L0-TRE search: at each level t = 1..T, the assignment the sweep
found to flip the label (if any) and the cumulative-union witness after tightening."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from l0tre_core import SearchContext, Witness


@dataclass
class TestCase:
    """One adversarial test case: the changed pixels, verified to flip the model's label."""

    __test__ = False  # not a pytest test class, whatever its name

    level: int  # the t whose sweep produced it
    source: str  # "sweep" (a flipping t-subset assignment) or "union" (cumulative union, tightened)
    witness: Witness
    label_new: int

    @property
    def l0(self) -> int:
        return self.witness.size


def generate(ctx: SearchContext, max_t: int, per_input: int, deadline: float | None = None) -> list[TestCase]:
    """Up to ``per_input`` distinct verified test cases for the input in ``ctx``, smallest levels first.

    A level whose sweep ran out of time still offers the union of the subsets it ranked.
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
    return cases
