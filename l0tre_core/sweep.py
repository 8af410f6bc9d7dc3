"""One input's search: the level-t sensitivity sweep (lower bound over V, ranking for the upper
bound), the cumulative-union upper bound and its tightening, and witness verification."""

from __future__ import annotations

import time
from dataclasses import dataclass
from math import comb
from typing import Any, Iterator

import numpy as np

from l0tre_core.witness import Witness, flips, score, score_and_flips
from l0tre_core.tensors import Encoder, assignment_digits, binomial_table, unrank_subsets
from l0tre_core.threat import ThreatModel

DONORS = 8  # donors tried by the last resort of the upper bound (each one gives a witness)
SYNTHETIC_DONORS = 256  # uniform-noise images classified, for a last resort without data donors
TOP_K = 4096  # most sensitive subsets kept per level (all of them at t = 1 for images up to 64x64)
PREFIX_BATCH = 32
PROBE_EVALUATIONS = 256  # the first chunk of a sweep under a deadline, before this model's speed is known


@dataclass
class Sensitivity:
    """The outcome of one level's sweep."""

    t: int
    complete: bool  # every (subset, assignment) pair was evaluated
    flip: Witness | None  # an assignment that flips the label, when one was met
    subsets: np.ndarray  # [K, t] the most sensitive subsets, most sensitive first
    values: np.ndarray  # [K, t, Cu] their minimising assignments (data space)
    sensitivity: np.ndarray  # [K] score(x) - min score over the subset's assignments
    evaluated: int


class Level:
    """L0-TRE's step at one level t for one input: the sweep over V, the flipping assignment it met
    (verified, counted against the clean input), and, on demand, the cumulative union of the most
    sensitive subsets, tightened and verified. The engine's methods and every application read
    their results from here; they differ only in what they do with them."""

    def __init__(self, ctx: "SearchContext", sens: Sensitivity) -> None:
        self.ctx = ctx
        self.sensitivity = sens
        self.t = sens.t
        flip = None
        if sens.flip is not None:
            # recount against the clean input: a value of V may equal the pixel's own value
            flip = Witness.between(ctx.x_units, sens.flip.apply(ctx.x_units))
            if flip.size == 0 or not ctx.verify(flip):
                flip = None
        self.flip: Witness | None = flip
        self._union: Witness | None | bool = False  # False: not computed yet

    @property
    def proven_over_v(self) -> bool:
        """Every assignment of V to every t-subset was evaluated and none flips the label."""
        return self.sensitivity.complete and self.sensitivity.flip is None

    def union(self) -> Witness | None:
        """The cumulative union of the ranked subsets, tightened, if it flips (verified)."""
        if self._union is False:
            w = self.ctx.cumulative_union(self.sensitivity) if len(self.sensitivity.subsets) else None
            if w is not None:
                w = self.ctx.tighten(w)
                if not self.ctx.verify(w):
                    w = None
            self._union = w
        return self._union  # type: ignore[return-value]


class SearchContext:
    """Everything the search needs about one input, prepared once."""

    def __init__(self, classifier: Any, kernels: Any, threat: ThreatModel, x: np.ndarray, ref: int, chunk: int) -> None:
        self.classifier = classifier
        self.kernels = kernels
        self.threat = threat
        self.encoder: Encoder = classifier.encoder(threat.unit)
        self.x_units = x.reshape(self.encoder.n_units, self.encoder.channels).astype(np.float32)
        self.x = x
        self.ref = ref
        self.chunk = max(1, chunk)
        self.values = threat.value_set(self.encoder.channels)  # [V, Cu]
        self.base = classifier.flat_input(x[None])[0].astype(np.float32)
        self.base_dev = kernels.asarray(self.base)
        self.probs = classifier.card.output == "probs"
        clean = classifier.run_flat(self.base[None])
        self.clean_score = float(self.score(clean)[0])
        self.sensitivities: dict[int, Sensitivity] = {}  # the latest sweep of each level, for other searches
        self.levels: dict[int, Level] = {}  # the step of each level, once taken
        # the data's inputs (canonical) and their classes, set by whoever owns the data: the upper
        # bound's last resort moves pixels towards those classified otherwise
        self.data: tuple[np.ndarray, np.ndarray] | None = None  # (inputs [N, ...], their classes)
        # measured cost of one evaluation (seconds), for sizing chunks that end by a deadline
        self.seconds_per_eval: float | None = None
        self._buffer: Any = None  # reused perturbation batch, clean except at _dirty
        self._dirty: Any = None

    def score(self, outputs: np.ndarray) -> np.ndarray:
        """The search's score of each output row (margin or reference score, as the threat says)."""
        return score(outputs, self.ref, self.threat.score, self.probs)

    def run_changes(self, units: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Model outputs for ``units [B, t]`` set to data-space ``values [B, t, Cu]``.

        Each model call's batch is written into one reused buffer just before the call (only the
        positions the previous batch changed are restored), so the batch the model reads is still
        in the cache and the clean input is copied once per input, not once per row."""
        pos, val = self.encoder.encode(units, values)
        out = np.empty((len(pos), self.classifier.n_classes), np.float32)
        for rows, batch in self._batches(pos, val):
            out[rows] = self.classifier.run_flat(batch)
        return out

    def assess_changes(self, units: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and flip flags ``[B]`` for ``units [B, t]`` set to ``values [B, t, Cu]``.

        With device kernels (``device_outputs``) and a runtime that binds its outputs, batches are
        built, run and reduced on the device and only the ``[B]`` results reach the host;
        otherwise the outputs come back (``run_changes``) and are reduced here. Same results."""
        if not (getattr(self.kernels, "device_outputs", False) and self.classifier.binds_outputs):
            return self.reduce_outputs(self.run_changes(units, values))
        pos, val = self.encoder.encode(units, values)
        scores, flipped = np.empty(len(pos), np.float64), np.empty(len(pos), bool)
        for rows, batch in self._batches(pos, val):
            out = self.classifier.run_flat_bound(batch)
            scores[rows], flipped[rows] = self.kernels.reduce(out, self.ref, self.threat.score, self.probs)
        return scores, flipped

    def reduce_outputs(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and flip flags of host outputs (``score_and_flips``: one pass)."""
        return score_and_flips(out, self.ref, self.threat.score, self.probs)

    def _batches(self, pos: np.ndarray, val: np.ndarray) -> Iterator[tuple[slice, Any]]:
        """Each model call's rows and its batch, in call sizes the classifier chooses."""
        n = len(pos)
        start = 0
        while start < n:
            stop = min(n, start + self.classifier.call_size(n - start))
            yield slice(start, stop), self._perturb(pos[start:stop], val[start:stop])
            start = stop

    def _perturb(self, pos: np.ndarray, val: np.ndarray) -> Any:
        """One model call's batch in the reused buffer (on the kernels' device)."""
        pos_dev = self.kernels.asarray(pos)
        fresh = self._buffer is None or self._buffer.shape[0] < len(pos)
        batch = self.kernels.perturb(self.base_dev, pos_dev, self.kernels.asarray(val),
                                     None if fresh else self._buffer, None if fresh else self._dirty)
        if fresh:
            self._buffer = batch
        self._dirty = pos_dev
        return batch

    def units_image(self, xu: np.ndarray) -> np.ndarray:
        return xu.reshape(self.x.shape)

    def verify(self, witness: Witness) -> bool:
        """Re-run the witness through the model's ordinary input path and recount its distance."""
        adv_units = witness.apply(self.x_units)
        recount = Witness.between(self.x_units, adv_units)
        if recount.size != witness.size or np.any(adv_units < self.threat.lo) or np.any(adv_units > self.threat.hi):
            return False
        out = self.classifier.outputs(self.units_image(adv_units)[None])
        return bool(flips(out, self.ref)[0])

    # --- level-t sweep ----------------------------------------------------------------------------

    def level(self, t: int, deadline: float | None) -> Level:
        """The L0-TRE step at level ``t`` (taken once; a step cut short by the deadline is
        taken again when asked again before the deadline, and left as it is after it)."""
        step = self.levels.get(t)
        if step is not None and deadline is not None and time.monotonic() >= deadline:
            return step  # out of time: a step cut short stays as it was, not restarted for nothing
        if step is None or not (step.sensitivity.complete or step.sensitivity.flip is not None):
            step = Level(self, self.sweep(t, deadline))
            self.levels[t] = step
        return step

    def toward_donors(self, deadline: float | None, most: int = DONORS) -> Witness | None:
        """A witness found by moving units of the input to their values in a *donor*, an input
        the model classifies otherwise: for each donor, the fewest of its most different units that
        flip the label (bisection over the count; all of them always flip, since the donor itself is
        classified otherwise), tightened and verified. The last resort where the searches over V
        find nothing, so nothing caps it: the first donor is always taken to the end, whatever the
        deadline, and the witness may change any number of units.

        Donors are the inputs of ``data`` classified otherwise, nearest (fewest differing units)
        first, then synthetic ones for when the data holds none (a one-input run, or data of one
        class): the constant images of V and seeded uniform noise over the valid range. Up to
        ``most`` donors are tried; the smallest witness is kept."""
        donors = self._donors()
        if not len(donors):
            return None
        gap = np.abs(donors - self.x_units[None]).sum(axis=2)  # [M, U]
        best: Witness | None = None
        for m in range(min(most, len(donors))):
            if best is not None and deadline is not None and time.monotonic() > deadline:
                break
            order = np.argsort(-gap[m], kind="stable")[: int((gap[m] > 0).sum())]

            def flipped(k: int) -> bool:
                adv = self.x_units.copy()
                adv[order[:k]] = donors[m, order[:k]]
                return bool(flips(self.classifier.outputs(self.units_image(adv)[None]), self.ref)[0])

            if not len(order) or not flipped(len(order)):
                continue  # a donor the model no longer classifies otherwise (a tie, NaN)
            lo, hi = 0, len(order)  # flipped(hi) holds
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if flipped(mid) else (mid, hi)
            adv = self.x_units.copy()
            adv[order[:hi]] = donors[m, order[:hi]]
            w = self.tighten(Witness.between(self.x_units, adv))
            if self.verify(w) and (best is None or w.size < best.size):
                best = w
        return best

    def _donors(self) -> np.ndarray:
        """``[M, U, Cu]`` inputs classified otherwise than ``ref``: the data's nearest first, then
        synthetic ones (built only when the data has too few)."""
        found = []
        if self.data is not None:
            xs, classes = self.data
            others = xs[classes != self.ref]  # taken here only: the last resort is rare
            if len(others):
                others = others.reshape(len(others), self.encoder.n_units, self.encoder.channels).astype(np.float32)
                nearest = np.argsort((others != self.x_units[None]).any(axis=2).sum(axis=1), kind="stable")
                found.append(others[nearest[:DONORS]])
        if sum(len(f) for f in found) < DONORS:
            u, c = self.encoder.n_units, self.encoder.channels
            rng = np.random.default_rng(0)  # seeded: the same donors every run
            lo, hi = self.threat.lo, self.threat.hi
            synthetic = np.concatenate([
                np.broadcast_to(self.values[:, None, :], (len(self.values), u, c)),
                (lo + (hi - lo) * rng.random((SYNTHETIC_DONORS, u, c))).astype(np.float32),
            ]).astype(np.float32)
            other = flips(self.classifier.outputs(synthetic.reshape(len(synthetic), *self.x.shape)), self.ref)
            found.append(synthetic[other])
        return np.concatenate(found) if found else np.zeros((0, self.encoder.n_units, self.encoder.channels), np.float32)

    def sweep(self, t: int, deadline: float | None, top_k: int = TOP_K) -> Sensitivity:
        result = self._sweep(t, deadline, top_k)
        self.sensitivities[t] = result
        return result

    def _sweep(self, t: int, deadline: float | None, top_k: int) -> Sensitivity:
        n, nv = self.encoder.n_units, len(self.values)
        per_subset = nv**t
        total = comb(n, t)
        table = binomial_table(n, t)
        digits = assignment_digits(np.arange(per_subset), nv, t)  # [A, t]
        assign_values = self.values[digits]  # [A, t, Cu]
        step = max(1, self.chunk // per_subset)
        keep_sub = np.zeros((0, t), np.int64)
        keep_val = np.zeros((0, t, self.encoder.channels), np.float32)
        keep_min = np.zeros(0, np.float64)
        cut = np.inf
        evaluated = 0
        r0 = 0
        while r0 < total:
            m = step if deadline is None else self._chunk_by(deadline, step, per_subset, first=r0 == 0)
            if m == 0:  # out of time before this chunk: the level is not complete
                return Sensitivity(t, False, None, *_ranked(keep_sub, keep_val, keep_min, self.clean_score), evaluated)
            r1 = min(total, r0 + m)
            subsets = unrank_subsets(np.arange(r0, r1), n, t, table)  # [m, t]
            m = r1 - r0
            units = np.repeat(subsets, per_subset, axis=0)
            values = np.tile(assign_values, (m, 1, 1))
            started = time.monotonic()
            scores, flipped = self.assess_changes(units, values)
            self._clock(len(units), time.monotonic() - started)
            evaluated += len(units)
            if flipped.any():
                i = int(np.argmax(flipped))
                w = Witness(units[i].copy(), values[i].copy())
                return Sensitivity(t, False, w, *_ranked(keep_sub, keep_val, keep_min, self.clean_score), evaluated)
            s = scores.reshape(m, per_subset)
            arg = s.argmin(axis=1)
            mins = s[np.arange(m), arg]
            sel = slice(None) if cut == np.inf else np.flatnonzero(mins <= cut)
            keep_sub = np.concatenate([keep_sub, subsets[sel]])
            keep_val = np.concatenate([keep_val, assign_values[arg[sel]]])
            keep_min = np.concatenate([keep_min, mins[sel]])
            if len(keep_min) > 2 * top_k:
                keep_sub, keep_val, keep_min = _top(keep_sub, keep_val, keep_min, top_k)
                # the top k's largest score: a subset scoring above it can never enter the top k,
                # so later chunks drop those at once instead of partitioning them again
                cut = float(keep_min.max())
            r0 = r1
        keep_sub, keep_val, keep_min = _top(keep_sub, keep_val, keep_min, top_k)
        return Sensitivity(t, True, None, *_ranked(keep_sub, keep_val, keep_min, self.clean_score), evaluated)

    def _clock(self, evaluations: int, seconds: float) -> None:
        """Record a chunk's measured seconds per evaluation (the latest chunk's: the load on
        the machine changes as the run goes)."""
        if evaluations:
            self.seconds_per_eval = seconds / evaluations

    def _chunk_by(self, deadline: float, step: int, per_subset: int, first: bool = False) -> int:
        """How many subsets the next chunk may take to end by ``deadline``: the full ``step``
        while that fits, fewer as the deadline nears, 0 when not even one subset fits.

        A sweep that is asked for always makes progress: its ``first`` chunk runs whatever the
        deadline, as it always did (a full one once the deadline has passed: at t = 1 on images
        of up to 2,048 units, the whole sweep; at least one subset otherwise). Before any chunk of
        this input was timed, the first chunk is a probe of ``PROBE_EVALUATIONS`` that measures
        the model. Chunk sizes only change under a deadline (the probe, and the chunks near the
        deadline); a sweep that completes within its limit evaluates what an unlimited one does,
        in the same order, so it meets the same flip and keeps the same ranking (up to exact ties
        at the top k's last score, where ``_top``'s partition may keep another of the tied)."""
        left = deadline - time.monotonic()
        if left <= 0:
            return step if first else 0
        if self.seconds_per_eval is None:
            return max(1, min(step, PROBE_EVALUATIONS // per_subset))
        fits = int(min(step, left / (self.seconds_per_eval * per_subset)))  # (left may be inf)
        return max(1, fits) if first else fits

    # --- upper bound ------------------------------------------------------------------------------

    def cumulative_union(self, sens: Sensitivity) -> Witness | None:
        """Apply the most sensitive subsets' minimising values cumulatively until the label flips.

        A unit already changed keeps its earlier value. Prefixes are evaluated in batches.
        """
        current = self.x_units.copy()
        changed: dict[int, None] = {}
        rows, snapshots = [], []
        for k in range(len(sens.subsets)):
            for j, u in enumerate(sens.subsets[k]):
                u = int(u)
                if u not in changed:
                    changed[u] = None
                    current[u] = sens.values[k, j]
            rows.append(current.copy())
            snapshots.append(list(changed))
            if len(rows) == PREFIX_BATCH or k == len(sens.subsets) - 1:
                out = self.classifier.outputs(np.stack([self.units_image(r) for r in rows]))
                flipped = flips(out, self.ref)
                if flipped.any():
                    i = int(np.argmax(flipped))
                    units = np.asarray(snapshots[i], np.int64)
                    return Witness(units, rows[i][units].copy())
                rows, snapshots = [], []
        return None

    def tighten(self, witness: Witness) -> Witness:
        """Restore changed units to their clean values while the image stays adversarial.

        Passes run in the witness's order until one restores nothing. Within a pass, every
        remaining candidate is tried at once on the current image; the first that keeps the image
        adversarial is committed, exactly as the one-at-a-time pass would, and the pass goes on
        from there.
        """
        adv = witness.apply(self.x_units)
        order = [int(u) for u in witness.units]
        while True:
            restored_any = False
            i = 0
            while i < len(order):
                candidates = order[i:]
                batch = np.repeat(adv[None], len(candidates), axis=0)
                batch[np.arange(len(candidates)), candidates] = self.x_units[candidates]
                out = self.classifier.outputs(batch.reshape((len(candidates), *self.x.shape)))
                still = flips(out, self.ref)
                if not still.any():
                    break
                j = int(np.argmax(still))
                u = candidates[j]
                adv[u] = self.x_units[u]
                order.pop(i + j)
                i += j
                restored_any = True
            if not restored_any:
                break
        return Witness.between(self.x_units, adv)


def _top(sub: np.ndarray, val: np.ndarray, mins: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(mins) <= k:
        return sub, val, mins
    idx = np.argpartition(mins, k - 1)[:k]
    return sub[idx], val[idx], mins[idx]


def _ranked(sub: np.ndarray, val: np.ndarray, mins: np.ndarray, clean: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most sensitive first; ties broken by subset order so runs are reproducible."""
    order = np.lexsort((*sub.T[::-1], mins)) if len(mins) else np.zeros(0, np.int64)
    return sub[order], val[order], clean - mins[order]
