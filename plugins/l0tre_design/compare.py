"""Which model is more robust, and what may be claimed about it.

A model is *provably* more robust than another only when its global lower bound exceeds the
other's global upper bound: then every possible value of the first's global robustness is above
every possible value of the second's. Overlapping intervals support no claim, whatever their
midpoints say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

# A mean of per-input lower bounds is only as strong as its weakest part. "none" is the trivial
# bound L = 1, which holds for every input, so it does not weaken a sound mean.
_STRENGTH = {"sound": 2, "none": 2, "discrete": 1}


@dataclass(frozen=True)
class ModelBounds:
    """The global robustness interval of one model on the shared inputs."""

    name: str
    lower: float
    upper: float | None  # None: some input has no witness, so no finite upper bound
    guarantee: str  # of the global lower bound: sound, discrete or none


@dataclass(frozen=True)
class Verdict:
    first: str
    second: str
    winner: str | None  # the provably more robust one, None when the intervals overlap
    text: str


def global_guarantee(per_input: Iterable[str]) -> str:
    """The guarantee of a mean of per-input lower bounds: discrete if any part is only discrete,
    sound if any is sound (the rest trivially so), none when every part is the trivial bound."""
    kinds = set(per_input)
    if "discrete" in kinds:
        return "discrete"
    return "sound" if "sound" in kinds else "none"


def _interval(m: ModelBounds) -> str:
    up = "inf" if m.upper is None else f"{m.upper:.3f}"
    return f"[{m.lower:.3f}, {up}]"


def compare(a: ModelBounds, b: ModelBounds) -> Verdict:
    """The claim that the bounds of ``a`` and ``b`` support (strict inequality: equal ends overlap)."""
    for win, lose in ((a, b), (b, a)):
        if lose.upper is not None and win.lower > lose.upper:
            scope = "" if win.guarantee != "discrete" else " for pixel values in V (its lower bound is discrete, not sound)"
            text = (f"{win.name} is provably more robust than {lose.name}{scope}: "
                    f"global lower bound {win.lower:.3f} > global upper bound {lose.upper:.3f}")
            return Verdict(a.name, b.name, win.name, text)
    text = f"{a.name} {_interval(a)} and {b.name} {_interval(b)}: the bounds overlap, no claim"
    return Verdict(a.name, b.name, None, text)


def rank(models: Iterable[ModelBounds]) -> list[ModelBounds]:
    """Most robust first by the proven part, the global lower bound; ties by the upper bound (no
    finite upper bound counts as highest). An order, not a claim: see :func:`compare`."""
    return sorted(models, key=lambda m: (m.lower, math.inf if m.upper is None else m.upper), reverse=True)


def claims(ranked: list[ModelBounds]) -> list[Verdict]:
    """The verdict for every pair, in rank order."""
    return [compare(ranked[i], ranked[j]) for i in range(len(ranked)) for j in range(i + 1, len(ranked))]
