"""Random search over pixel sets, in the spirit of Sparse-RS, that shrinks an adversarial example.

Given an adversarial example of k changed units (pixels, or single features), the search looks for
one of k - 1. It starts from the example minus its least useful unit (the one whose restoration
leaves the lowest margin), then proposes batches of random moves: swap some changed units for
random unchanged ones at random values of V (the number swapped decays with Sparse-RS's schedule),
or give one changed unit another value of V. The best move of a batch is kept when it lowers the
margin score. When that stalls (``patience`` evaluations without a gain) it restarts from random
sets of k - 1 units. When the label flips it verifies the example and goes on to k - 2 with what
is left of the query budget. Without a starting example it first looks for any one: random sparse
changes of k units, k doubling up to a cap.

New units are drawn uniformly, or, for a share of them, from a *prior*: the t = 1 sensitivity
ranking where the caller has one (``UnitPrior.from_sensitivity``), otherwise the neighbourhood of
the pixels the witness already changes (``spatial_prior``).

Everything random comes from the ``rng`` it is given, so a run is reproducible; candidates are
evaluated in batches through ``SearchContext.run_changes``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l0tre_core import Witness, flips

DEFAULT_QUERIES = 2000  # model evaluations per call (per input, per driver level)
DEFAULT_BATCH = 32  # candidates per model call
DEFAULT_K_CAP = 64  # largest k tried when there is no example to start from
DEFAULT_PATIENCE = 500  # evaluations without a better score before a restart
ALPHA_INIT = 0.3  # Sparse-RS: share of the changed units swapped at the start of a climb
SEEDED_RESTARTS = True  # restart climbs from the witness minus one unit before random sets


def alpha_schedule(alpha_init: float, frac: float) -> float:
    """Sparse-RS's piecewise-constant decay of the swapped share, over the budget fraction used."""
    it = frac * 10_000
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10), (6000, 12), (8000, 15)):
        if it <= bound:
            return alpha_init / div
    return alpha_init / 20


@dataclass
class UnitPrior:
    """Where to look first: a distribution over units that a share ``mix`` of new units is drawn
    from, and optionally each unit's best value (index into V, -1 for none), used for a share
    ``best_mix`` of the units drawn from the prior."""

    cdf: np.ndarray  # [n] cumulative weights
    best: np.ndarray | None = None  # [n]
    mix: float = 0.5
    best_mix: float = 0.5

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        u = np.searchsorted(self.cdf, rng.random(shape) * self.cdf[-1], side="right")
        return np.minimum(u, len(self.cdf) - 1)

    @classmethod
    def from_sensitivity(cls, sens: Any, n: int, values: np.ndarray, *, top: float = 0.1, mix: float = 0.5,
                         best_mix: float = 0.5) -> "UnitPrior | None":
        """From a t = 1 sweep (``SearchContext.sweep(1)``): weight decaying with each unit's rank,
        most of the mass on the top share ``top`` of the units; best values = minimising values."""
        subsets = np.asarray(sens.subsets)
        if subsets.ndim != 2 or subsets.shape[1] != 1 or not len(subsets):
            return None
        units = subsets[:, 0]
        weight = np.full(n, 1e-3)
        weight[units] += np.exp(-np.arange(len(units)) / max(1.0, top * n))
        match = np.all(np.asarray(sens.values)[:, 0, None, :] == values[None], axis=-1)
        best = np.full(n, -1, np.int64)
        best[units] = np.where(match.any(-1), match.argmax(-1), -1)
        return cls(np.cumsum(weight), best, mix, best_mix)


def spatial_prior(geometry: Any, witness: Witness | None, n: int, *, sigma: float = 3.0, mix: float = 0.5) -> UnitPrior | None:
    """Without a sensitivity ranking: look near the pixels the witness already changes."""
    if witness is None or witness.size == 0 or geometry is None or not getattr(geometry, "image_shape", None):
        return None
    if geometry.n_pixels != n:  # feature units: no spatial map
        return None
    w = geometry.image_shape[1]
    ys, xs = np.divmod(np.arange(n), w)
    wy, wx = np.divmod(witness.units, w)
    weight = np.full(n, 1e-3)
    for y, x in zip(wy, wx):  # one pass per changed pixel: [n] memory whatever the witness size
        weight += np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2 * sigma**2))
    return UnitPrior(np.cumsum(weight), None, mix, 0.0)


@dataclass
class SearchOutcome:
    """What one search found: the smallest verified adversarial example (or None), its cost, and
    each size reached with the evaluations spent by then."""

    witness: Witness | None
    evaluations: int
    trace: list[tuple[int, int]] = field(default_factory=list)  # (evaluations so far, size found)


class RandomSearch:
    """The ``random-search`` upper-bound method (an ``UpperBoundMethod``).

    ``queries`` is the evaluation budget of one call (per input and driver level), ``batch`` the
    candidates per model call, ``k_cap`` the largest k tried without a starting example,
    ``patience`` the evaluations without a gain before a restart.
    """

    name = "random-search"
    kind = "upper"
    description = "Sparse-RS-style random search over pixel sets that shrinks the witness one pixel at a time"

    def __init__(self, queries: int = DEFAULT_QUERIES, batch: int = DEFAULT_BATCH, k_cap: int = DEFAULT_K_CAP,
                 patience: int = DEFAULT_PATIENCE, alpha_init: float = ALPHA_INIT) -> None:
        for name, value, least in (("queries", queries, 0), ("batch", batch, 1), ("k_cap", k_cap, 1), ("patience", patience, 1)):
            if int(value) != value or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if not 0 < alpha_init <= 1:
            raise ValueError(f"alpha_init must be in (0, 1], got {alpha_init}")
        self.queries = int(queries)
        self.batch = int(batch)
        self.k_cap = int(k_cap)
        self.patience = int(patience)
        self.alpha_init = float(alpha_init)

    def improve(self, ctx: Any, state: Any, t: int, deadline: float | None, rng: np.random.Generator) -> Witness | None:
        """A verified witness smaller than ``state``'s upper bound, or None (the driver's hook)."""
        if state.settled or state.upper == 0:
            return None
        ranking = ctx.sensitivities.get(1)
        if ranking is not None and len(ranking.subsets):
            prior = UnitPrior.from_sensitivity(ranking, ctx.encoder.n_units, ctx.values)
        else:
            prior = spatial_prior(getattr(ctx.classifier, "geometry", None), state.witness, ctx.encoder.n_units)
        outcome = self.search(ctx, state.witness, rng, deadline, lower=state.lower, prior=prior)
        w = outcome.witness
        if w is None or (state.upper is not None and w.size >= state.upper):
            return None
        return w

    def search(self, ctx: Any, start: Witness | None, rng: np.random.Generator, deadline: float | None = None,
               *, lower: int = 1, queries: int | None = None, prior: UnitPrior | None = None) -> SearchOutcome:
        """Shrink ``start`` (or first find an example when it is None) within ``queries`` evaluations.

        ``lower`` is a lower bound on the size of any example over V, so the search stops there.
        The outcome's witness is None unless the search found an example smaller than ``start``
        (or any example, without a start); it is always verified and never larger than ``start``.
        """
        budget = self.queries if queries is None else int(queries)
        run = _Run(ctx, rng, budget, self.batch, deadline, self.alpha_init, self.patience, prior)
        lower = max(1, int(lower))
        best: Witness | None = None
        if start is None:
            w = run.find_any(min(self.k_cap, run.n))
            if w is None:
                return SearchOutcome(None, run.used, run.trace)
            best = w
        else:
            w = Witness.between(ctx.x_units, start.apply(ctx.x_units))
        while w.size - 1 >= lower and not run.exhausted():
            smaller = run.shrink_once(w)
            if smaller is None:
                break
            w = best = smaller
        return SearchOutcome(best, run.used, run.trace)


class _Run:
    """One search: the budget left, the rng and the value tables of the input."""

    def __init__(self, ctx: Any, rng: np.random.Generator, queries: int, batch: int, deadline: float | None,
                 alpha_init: float, patience: int, prior: UnitPrior | None) -> None:
        self.ctx = ctx
        self.rng = rng
        self.total = max(0, int(queries))
        self.used = 0
        self.batch = batch
        self.deadline = deadline
        self.alpha_init = alpha_init
        self.patience = patience
        self.prior = prior
        self.trace: list[tuple[int, int]] = []
        self.n = ctx.encoder.n_units
        self.values = np.asarray(ctx.values, np.float32)  # [V, Cu]
        self.nv = len(self.values)
        self.clean_idx = self.value_index(ctx.x_units)  # [n]: the row of V each clean unit equals, or -1
        self.n_new = self.nv - (self.clean_idx >= 0)  # [n]: values a unit may change to

    # --- helpers ----------------------------------------------------------------------------------

    @property
    def left(self) -> int:
        return self.total - self.used

    def exhausted(self) -> bool:
        return self.left <= 0 or (self.deadline is not None and time.monotonic() > self.deadline)

    def value_index(self, rows: np.ndarray) -> np.ndarray:
        """For each row ``[.., Cu]``, the index of the equal row of V, or -1."""
        match = np.all(rows[..., None, :] == self.values, axis=-1)  # [.., V]
        return np.where(match.any(-1), match.argmax(-1), -1)

    def new_values(self, units: np.ndarray) -> np.ndarray:
        """Uniform indices into V for ``units``, never the unit's clean value."""
        e = self.clean_idx[units]
        j = (self.rng.random(units.shape) * self.n_new[units]).astype(np.int64)
        return j + ((e >= 0) & (j >= e))

    def other_values(self, units: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Uniform indices into V, never the clean value nor ``current`` (-1 for none); callers
        make sure one is left (``revaluable``)."""
        e1 = self.clean_idx[units]
        e2 = np.where(current == e1, -1, current)
        ex = np.sort(np.where(np.stack([e1, e2], -1) < 0, self.nv, np.stack([e1, e2], -1)), axis=-1)
        count = self.nv - (ex < self.nv).sum(-1)
        j = (self.rng.random(units.shape) * count).astype(np.int64)
        j += j >= ex[..., 0]
        j += j >= ex[..., 1]
        return np.minimum(j, self.nv - 1)

    def revaluable(self, units: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Whether V holds a value other than the clean and the current one, per unit."""
        return self.n_new[units] - ((current >= 0) & (current != self.clean_idx[units])) > 0

    def evaluate(self, units: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, flipped = self.ctx.assess_changes(units, vals)
        self.used += len(units)
        return scores, flipped

    def accept_flip(self, units: np.ndarray, vals: np.ndarray, scores: np.ndarray, flipped: np.ndarray) -> Witness | None:
        """The most adversarial flipped candidate, verified through the model's ordinary path."""
        for i in np.flatnonzero(flipped)[np.argsort(scores[flipped], kind="stable")][:2]:
            w = Witness.between(self.ctx.x_units, Witness(units[i], vals[i]).apply(self.ctx.x_units))
            self.used += 1
            if w.size and self.ctx.verify(w):
                self.trace.append((self.used, w.size))
                return w
        return None

    def screen(self, units: np.ndarray, vals: np.ndarray) -> tuple[Witness | None, tuple[np.ndarray, np.ndarray, float] | None]:
        """Evaluate candidate starts (as many as the budget allows): a verified flip, or the best
        start to climb from."""
        take = min(len(units), self.left)
        if not take:
            return None, None
        units, vals = units[:take], vals[:take]
        scores, flipped = self.evaluate(units, vals)
        self._last_seed_scores = scores.copy()
        self._last_scores = np.where(flipped, np.inf, scores)
        if flipped.any():
            found = self.accept_flip(units, vals, scores, flipped)
            if found is not None:
                return found, None
            scores = np.where(flipped, np.inf, scores)
        i = int(np.argmin(scores))
        return None, (units[i].copy(), vals[i].copy(), float(scores[i]))

    # --- moves ------------------------------------------------------------------------------------

    def draw_units(self, shape: tuple[int, ...], exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Units outside ``exclude`` (a mask [n]): uniform, or from the prior for a share of them;
        also which came from the prior."""
        comp = np.flatnonzero(~exclude)
        new = comp[self.rng.integers(0, len(comp), shape)]
        from_prior = np.zeros(shape, bool)
        if self.prior is not None:
            drawn = self.prior.draw(self.rng, shape)
            from_prior = (self.rng.random(shape) < self.prior.mix) & ~exclude[drawn]
            new = np.where(from_prior, drawn, new)
        return new, from_prior

    def values_for(self, units: np.ndarray, from_prior: np.ndarray) -> np.ndarray:
        """Values for new units: random, or the prior's best value for a share of those drawn from it."""
        j = self.new_values(units)
        if self.prior is not None and self.prior.best is not None:
            best = self.prior.best[units]
            use = from_prior & (best >= 0) & (best != self.clean_idx[units]) & (self.rng.random(units.shape) < self.prior.best_mix)
            j = np.where(use, best, j)
        return j

    def propose(self, cu: np.ndarray, cv: np.ndarray, ci: np.ndarray, b: int, frac: float) -> tuple[np.ndarray, np.ndarray] | None:
        """``b`` random neighbours of the current set ``cu [m]`` with values ``cv [m, Cu]`` (their
        indices into V ``ci``, -1 for none)."""
        rng = self.rng
        m = len(cu)
        in_set = np.zeros(self.n, bool)
        in_set[cu] = True
        n_out = self.n - m
        revalue_pos = np.flatnonzero(self.revaluable(cu, ci))
        if n_out == 0 and len(revalue_pos) == 0:
            return None
        n_reval = 0 if len(revalue_pos) == 0 else (b if n_out == 0 else b // 4)
        units = np.repeat(cu[None], b, axis=0)
        vals = np.repeat(cv[None], b, axis=0)
        if n_reval:
            pos = revalue_pos[rng.integers(0, len(revalue_pos), n_reval)]
            vals[np.arange(n_reval), pos] = self.values[self.other_values(cu[pos], ci[pos])]
        ns = b - n_reval
        if ns:
            width = max(1, min(n_out, m, int(round(alpha_schedule(self.alpha_init, frac) * m))))
            counts = rng.integers(1, width + 1, ns)
            pos = np.argsort(rng.random((ns, m)), axis=1)[:, :width]
            new, from_prior = self.draw_units((ns, width), in_set)
            if width > 1:  # distinct new units within a candidate
                while True:
                    s = np.sort(new, axis=1)
                    dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
                    if not len(dup):
                        break
                    new[dup], from_prior[dup] = self.draw_units((len(dup), width), in_set)
            j = self.values_for(new, from_prior)
            mask = np.arange(width)[None] < counts[:, None]
            rows = np.arange(n_reval, b)[:, None]
            units[rows, pos] = np.where(mask, new, units[rows, pos])
            vals[rows, pos] = np.where(mask[..., None], self.values[j], vals[rows, pos])
        return units, vals

    def climb(self, cu: np.ndarray, cv: np.ndarray, cs: float, limit: int, patience: int | None = None) -> Witness | None:
        """Random search at a fixed size from ``(cu, cv)`` with score ``cs`` until the label flips
        (the verified example), ``limit`` evaluations are spent or ``patience`` evaluations pass
        without a better score (None)."""
        start = last_gain = self.used
        ci = self.value_index(cv)
        while not self.exhausted() and self.used - start < limit:
            if patience is not None and self.used - last_gain >= patience:
                return None
            b = min(self.batch, self.left, limit - (self.used - start))
            proposal = self.propose(cu, cv, ci, b, (self.used - start) / max(1, self.total))
            if proposal is None:
                return None
            units, vals = proposal
            scores, flipped = self.evaluate(units, vals)
            if flipped.any():
                w = self.accept_flip(units, vals, scores, flipped)
                if w is not None:
                    return w
                scores = np.where(flipped, np.inf, scores)
            i = int(np.argmin(scores))
            if scores[i] < cs:
                cu, cv, cs = units[i].copy(), vals[i].copy(), float(scores[i])
                ci = self.value_index(cv)
                last_gain = self.used
        return None

    def random_sets(self, m: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``b`` sets of ``m`` distinct units (uniform, or from the prior) with new values."""
        units = np.empty((b, m), np.int64)
        from_prior = np.zeros((b, m), bool)
        none = np.zeros(self.n, bool)
        for r in range(b):
            got: list[int] = []
            seen: set[int] = set()
            while len(got) < m:
                cand, prior = self.draw_units((2 * (m - len(got)),), none)
                for u, p in zip(cand.tolist(), prior.tolist()):
                    if u not in seen and len(got) < m:
                        seen.add(u)
                        got.append(u)
                        from_prior[r, len(got) - 1] = p
            units[r] = got
        return units, self.values[self.values_for(units, from_prior)]

    def shrink_once(self, w: Witness) -> Witness | None:
        """A verified example with ``w.size - 1`` units, or None when the budget ran out first:
        from ``w`` minus its least useful unit, then from random restarts when that stalls."""
        k = w.size
        keep = ~np.eye(k, dtype=bool)
        units = np.broadcast_to(w.units, (k, k))[keep].reshape(k, k - 1)
        vals = np.broadcast_to(w.values, (k, *w.values.shape))[keep].reshape(k, k - 1, -1)
        order = self.rng.permutation(k)  # with too little budget to rank every unit, drop random ones
        units, vals = units[order], vals[order]
        take = min(k, self.left)
        found, start = self.screen(units, vals)
        if found is not None or start is None:
            return found
        # restarts seeded from the witness: each "w minus one unit", most promising first (their
        # scores came with the screen), before random sets of k - 1 units, which rarely beat them
        seeds = [i for i in np.argsort(self._last_scores[:take], kind="stable")[1:] if np.isfinite(self._last_scores[i])]
        while found is None and start is not None and not self.exhausted():
            found = self.climb(*start, limit=self.left, patience=self.patience)
            if found is None and not self.exhausted():
                if SEEDED_RESTARTS and seeds:
                    i = seeds.pop(0)
                    start = (units[i].copy(), vals[i].copy(), float(self._last_seed_scores[i]))
                else:
                    found, start = self.screen(*self.random_sets(k - 1, min(self.batch, self.left)))
        return found

    def find_any(self, k_cap: int) -> Witness | None:
        """Any verified example: random changes of k units, k = 1, 2, 4, ... up to ``k_cap``, each
        size given an equal share of the budget (random starts, then random search)."""
        sizes = []
        k = 1
        while k < k_cap:
            sizes.append(k)
            k *= 2
        sizes.append(k_cap)
        for pos, k in enumerate(sizes):
            if self.exhausted():
                return None
            share = max(1, self.left // (len(sizes) - pos))
            found, start = self.screen(*self.random_sets(k, min(self.batch, share)))
            if found is not None:
                return found
            if start is not None:
                found = self.climb(*start, limit=share - min(self.batch, share))
                if found is not None:
                    return found
        return None


GREEDY_POOL = 2048  # most (unit, value) candidates a greedy step evaluates (all of them on MNIST)


def greedy_witness(ctx: Any, sens: Any, deadline: float | None, max_evals: int) -> tuple[Witness | None, int]:
    """Adaptive greedy construction: from the clean input, add the (unit, value of V) change that
    lowers the margin most *given the changes already made*, until the label flips; the verified
    example (untightened) and the evaluations spent.

    L0-TRE's cumulative union ranks units once, at the clean input; here every step re-ranks them
    at the current image, so units that only matter together are found. Each step costs one
    evaluation per candidate: every (unit, value) pair when there are at most ``GREEDY_POOL``, the
    ``GREEDY_POOL`` most sensitive ones of the t = 1 sweep otherwise."""
    values = np.asarray(ctx.values, np.float32)
    n, nv = ctx.encoder.n_units, len(values)
    units = np.repeat(np.arange(n), nv)
    vals = np.tile(values, (n, 1))
    differs = np.any(vals != ctx.x_units[units], axis=1)
    units, vals = units[differs], vals[differs]
    if len(units) > GREEDY_POOL and sens is not None and len(sens.subsets):
        rank = np.full(n, len(sens.subsets), np.int64)
        rank[np.asarray(sens.subsets)[:, 0]] = np.arange(len(sens.subsets))
        keep = np.argsort(rank[units], kind="stable")[:GREEDY_POOL]
        units, vals = units[keep], vals[keep]
    chosen_u = np.zeros(0, np.int64)
    chosen_v = np.zeros((0, values.shape[1]), np.float32)
    used = 0
    while len(units) and used + len(units) <= max_evals and not (deadline is not None and time.monotonic() > deadline):
        k = len(chosen_u)
        batch_u = np.concatenate([np.broadcast_to(chosen_u, (len(units), k)), units[:, None]], axis=1)
        batch_v = np.concatenate([np.broadcast_to(chosen_v, (len(units), k, values.shape[1])), vals[:, None]], axis=1)
        scores, flipped = ctx.assess_changes(batch_u, batch_v)
        used += len(units)
        if flipped.any():
            for i in np.flatnonzero(flipped)[np.argsort(scores[flipped], kind="stable")][:2]:
                w = Witness.between(ctx.x_units, Witness(batch_u[i], batch_v[i]).apply(ctx.x_units))
                used += 1
                if w.size and ctx.verify(w):
                    return w, used
            return None, used
        i = int(np.argmin(scores))
        chosen_u = batch_u[i].copy()
        chosen_v = batch_v[i].copy()
        drop = units != units[i]  # the unit is taken: its other values leave the pool too
        units, vals = units[drop], vals[drop]
    return None, used

