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
    """The global robustness interval of one model on the shared inputs (and, for estimating
    what would decide a comparison, each input's bounds)."""

    name: str
    lower: float
    upper: float | None  # None: some input has no witness, so no finite upper bound
    guarantee: str  # of the global lower bound: sound, discrete or none
    lowers: tuple[int, ...] = ()  # per input
    uppers: tuple[int | None, ...] = ()
    max_t: int = 0  # the largest level searched


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
    hint = deciding_budget(a, b)
    return Verdict(a.name, b.name, None, f"{text}; {hint}" if hint else text)


def lower_after(m: ModelBounds, levels: int) -> float:
    """The best global lower bound ``levels`` more levels could prove: every input's lower bound
    one higher per level, never above its witness."""
    cap = [math.inf if u is None else u for u in m.uppers]
    return sum(min(lo + levels, c) for lo, c in zip(m.lowers, cap)) / len(m.lowers)


def lower_if_finished(m: ModelBounds) -> float:
    """The best global lower bound the levels already searched (t <= max_t) could prove: an input
    whose certificate stopped short (a time limit, the float32 band, an unknown) raised to
    max_t + 1, never above its witness. What a longer ``--certify-time`` could at most give."""
    cap = [math.inf if u is None else u for u in m.uppers]
    return sum(min(max(lo, m.max_t + 1), c) for lo, c in zip(m.lowers, cap)) / len(m.lowers)


def unfinished(m: ModelBounds) -> int:
    """Inputs whose lower bound stopped below max_t + 1 without a witness that explains it."""
    return sum(lo <= m.max_t and (u is None or u > lo) for lo, u in zip(m.lowers, m.uppers))


def per_input_tally(a: ModelBounds, b: ModelBounds) -> tuple[int, int, int]:
    """On how many inputs ``a`` is proven more robust than ``b`` (its lower bound above b's
    witness), the reverse, and neither."""
    wins_a = sum(ub is not None and la > ub for la, ub in zip(a.lowers, b.uppers))
    wins_b = sum(ua is not None and lb > ua for lb, ua in zip(b.lowers, a.uppers))
    return wins_a, wins_b, len(a.lowers) - wins_a - wins_b


def deciding_budget(a: ModelBounds, b: ModelBounds) -> str:
    """What could decide an overlapping pair, estimated from the per-input bounds, cheapest first:
    a longer certificate time (the levels already searched, finished); else the fewest extra levels
    (``--max-t``) after which one model's best possible lower bound would clear the other's upper
    bound; else whether stronger attacks (a lower upper bound) could; else that these inputs cannot
    separate the two. Then the per-input tally, which says whether more inputs could help. An
    estimate of what is possible, not a promise."""
    if not a.lowers or not b.lowers or len(a.lowers) != len(b.lowers):
        return ""
    return f"{_what_decides(a, b)}; {_tally_text(a, b)}"


def _what_decides(a: ModelBounds, b: ModelBounds) -> str:
    for win, lose in ((a, b), (b, a)):
        if lose.upper is not None and unfinished(win) and lower_if_finished(win) > lose.upper:
            return (f"{win.name} could be shown more robust with a longer certificate time (--certify-time, "
                    f"--input-time-limit): {unfinished(win)} of its inputs stopped below t = {win.max_t + 1}; finished, "
                    f"its lower bound can reach {lower_if_finished(win):.3f} > {lose.upper:.3f}")
    for levels in (1, 2, 3):
        for win, lose in ((a, b), (b, a)):
            if lose.upper is not None and lower_after(win, levels) > lose.upper:
                return (f"{win.name} could be shown more robust with --max-t {win.max_t + levels} "
                        f"(if every level it proves, its lower bound can reach {lower_after(win, levels):.3f} "
                        f"> {lose.upper:.3f})")
    for win, lose in ((a, b), (b, a)):
        best = win.upper if win.upper is not None else math.inf
        if best > lose.lower and (lose.upper is None or lose.upper > lose.lower):
            return (f"only stronger attacks on {lose.name} (a smaller witnessed upper bound, e.g. a larger "
                    f"--upper search budget) together with higher levels for {win.name} could decide it")
    return "these inputs cannot separate the two: their intervals overlap whatever the budget"


def _tally_text(a: ModelBounds, b: ModelBounds) -> str:
    wins_a, wins_b, neither = per_input_tally(a, b)
    n = len(a.lowers)
    text = f"per input, {a.name} is proven more robust on {wins_a} of {n}, {b.name} on {wins_b}, neither on {neither}"
    if wins_a and wins_b:
        return text + ": the models differ input by input, so more inputs would not decide the means"
    if wins_a or wins_b:
        return text + ": more inputs decide nothing by themselves (the bounds are means), tighter bounds on the undecided inputs would"
    return text


def certified_share(m: ModelBounds, levels: int) -> list[float]:
    """The share of inputs proven robust at each t = 1..levels (lower bound above t)."""
    n = len(m.lowers) or 1
    return [sum(lo > t for lo in m.lowers) / n for t in range(1, levels + 1)]


def rank(models: Iterable[ModelBounds]) -> list[ModelBounds]:
    """Most robust first by the proven part, the global lower bound; ties by the share of inputs
    proven at the highest level, then the next lower level, ...; then by the upper bound (no finite
    upper bound counts as highest). An order, not a claim: see :func:`compare`."""
    def key(m: ModelBounds) -> tuple[float, tuple[float, ...], float]:
        shares = tuple(reversed(certified_share(m, m.max_t))) if m.lowers else ()
        return m.lower, shares, math.inf if m.upper is None else m.upper

    return sorted(models, key=key, reverse=True)


def claims(ranked: list[ModelBounds]) -> list[Verdict]:
    """The verdict for every pair, in rank order."""
    return [compare(ranked[i], ranked[j]) for i in range(len(ranked)) for j in range(i + 1, len(ranked))]
