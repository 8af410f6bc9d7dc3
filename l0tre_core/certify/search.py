"""Certification: one pass, then attack and split until proven, refuted or out of time.

- t = 1: the one-pass bound; then every single-pixel box (the pixel's channels free, all others
  fixed) is bounded in one batch (forward-mode linear bounds + backward CROWN), undecided boxes
  are bisected, and the corners/centres of undecided boxes are evaluated to find counterexamples.
  Complete up to ``MAX_DEPTH`` bisections: proven or refuted unless time runs out.
- t >= 2: the one-pass bound; an attack (all single-pixel corners, then a beam search over corner
  assignments of the most sensitive pixels); then branch and bound over pixels ("p unchanged"
  versus "p changed, budget t - 1"), domains whose budget reaches 0 becoming boxes as for t = 1.
  At t = 2, when branch and bound has not finished within ``PAIR_SWITCH_SHARE`` of the time left,
  every pair of pixels is bounded as a box instead (complete, about C(P, 2) boxes: minutes on a
  small MNIST CNN, where branch and bound on one-pass bounds makes little progress).

A certificate is about the float32 network onnxruntime runs: every bound includes the float32
rounding the network can add (``certify/float32.py``, ``Problem.prepare_float32``), and a margin
counts as proven only when its lower bound is strictly positive (a tie with a lower-index class is
a flip). The band is what the float32 terms cost the one-pass bound; boxes whose bound would be
positive without them but stays inside the band after ``BAND_DEPTH`` bisections are given up:
the verdict is then ``unknown`` with ``band`` set. A witness needs a
margin below ``-WITNESS_TOL`` and is re-verified (argmax, changed pixels, range) before it is
returned; the engine verifies it again in onnxruntime.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np

from l0tre_core.certify._types import InputSet, Verdict
from l0tre_core.certify.bounds import Boxes, Domains, Problem, box_bounds, pixel_terms, spec_bounds
from l0tre_core.certify.network import Network

WITNESS_TOL = 1e-6  # a witness must have margin below -WITNESS_TOL (float32 runtimes stay safe)
MAX_DEPTH = 40  # bisections of one box before it is given up (unknown)
BAND_DEPTH = 8  # bisections of a box that float64 proves but the float32 band does not
BOX_CHUNK_FLOATS = 12_000_000
DOMAIN_BATCH = 8
MAX_CORNERS = 8
PAIR_SWITCH_SHARE = 0.25  # t = 2: share of the time left for branch and bound before all pairs
PAIR_SWITCH_SECONDS = 10.0  # ... and the time it gets when there is no time limit
PAIR_CHUNK = 4096


class _Timer:
    def __init__(self, limit: float | None) -> None:
        self.start = time.perf_counter()
        self.deadline = None if limit is None else self.start + max(0.0, limit)

    def out(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def problem_for(net: Network, inputs: InputSet) -> Problem:
    return Problem(net, inputs.x0, inputs.lo, inputs.hi, inputs.pixel, inputs.n_pixels)


def margins(net: Network, ref: int, x: np.ndarray) -> np.ndarray:
    """``z_ref - max_{k != ref} z_k`` for each row of ``x``."""
    z = net.forward(x)
    others = np.delete(z, ref, axis=1)
    return z[:, ref] - others.max(axis=1)


def margin_lower_bounds(net: Network, inputs: InputSet, ref: int, t: int) -> np.ndarray:
    """One-pass lower bounds of ``z_ref - z_k`` over the L0 set of size ``t``, as an array of length
    K with ``+inf`` at ``ref``. The one-pass check proves iff all entries are > 0."""
    prob = problem_for(net, inputs)
    out = np.full(net.n_outputs, np.inf)
    if net.n_outputs < 2:
        return out
    t = int(max(0, min(t, prob.P)))
    lb, _, _ = spec_bounds(prob, Domains.ball(prob, t), ref)
    out[[k for k in range(net.n_outputs) if k != ref]] = lb[0]
    return out


def proof_margins(net: Network, inputs: InputSet, ref: int, t: int) -> np.ndarray:
    """The one-pass lower bounds of the float32 network's margins (``[K-1]``, classes other than
    ``ref`` in order): the one-pass check proves ``t`` iff all are > 0."""
    prob = problem_for(net, inputs)
    t = int(max(0, min(t, prob.P)))
    bounds = prob.prepare_float32(t)
    return spec_bounds(prob, Domains.ball(prob, t), ref, bounds=bounds)[0][0]


def _band(prob: Problem, t: int, ref: int, lb: np.ndarray) -> np.ndarray:
    """``[K-1]``: what the float32 terms cost the one-pass bounds ``lb``."""
    prob.exact_arithmetic = True
    try:
        lb64 = spec_bounds(prob, Domains.ball(prob, t), ref)[0][0]
    finally:
        prob.exact_arithmetic = False
    return np.maximum(lb64 - lb, 0.0)


def certify(
    net: Network,
    inputs: InputSet,
    ref: int,
    t: int,
    *,
    time_limit: float | None = None,
    split: bool = True,
) -> Verdict:
    """Is every input of at most ``t`` changed pixels (each changed pixel's channels anywhere in
    ``[lo, hi]``) classified ``ref``?

    ``proven``: yes, for the network evaluated in float32 with any summation order (every margin
    bound clears the float32 band; a tie with a lower-index class counts as a flip). ``refuted``: ``witness`` is a model-space
    input with at most ``t`` changed pixels (unchanged scalars bit-identical to ``x0``) that the
    network classifies otherwise. ``unknown``: neither within ``time_limit`` seconds (None: no
    limit; the one-pass bound always runs to the end). ``split=False``: the one-pass bound only.
    """
    timer = _Timer(time_limit)
    prob = problem_for(net, inputs)
    if not 0 <= ref < net.n_outputs:
        raise ValueError(f"reference label {ref} out of range")
    if net.n_outputs < 2:
        return Verdict("proven", None, timer.elapsed(), "a single output cannot change its top-1 label")
    z0 = net.forward(prob.x0[None])[0]
    m0 = float(z0[ref] - np.delete(z0, ref).max()) if net.n_outputs > 1 else np.inf
    if int(np.argmax(z0)) != ref:
        if m0 < -WITNESS_TOL:
            return Verdict("refuted", prob.x0.copy(), timer.elapsed(), "the clean input is not classified ref")
        # a near-tie that float32 and float64 may break differently: claim nothing
        return Verdict("unknown", None, timer.elapsed(), "the clean input is a near-tie with ref")
    t = int(max(0, min(t, prob.P)))
    # float32 rounding bounds from the ball: every box and domain of the search lies inside it
    bounds = prob.prepare_float32(t)
    lb, a_in, _ = spec_bounds(prob, Domains.ball(prob, t), ref, want_input=True, bounds=bounds)
    if lb.min() > 0:
        return Verdict("proven", None, timer.elapsed(), "one-pass" if t else "t = 0")
    if t == 0 or not split:
        in_band = bool((lb[0] + _band(prob, t, ref, lb[0])).min() > 0)
        return Verdict("unknown", None, timer.elapsed(), "inside the float32 band" if in_band else "one-pass inconclusive",
                       band=in_band)
    search = _Search(prob, ref, t, timer, lambda: _band(prob, t, ref, lb[0]))
    return search.run(lb, a_in)


class _Search:
    def __init__(self, prob: Problem, ref: int, t: int, timer: _Timer, band: Callable[[], np.ndarray]) -> None:
        self.prob = prob
        self._band_of = band
        self._band: np.ndarray | None = None
        self.gave_up_band = 0
        self.net = prob.net
        self.ref = ref
        self.t = t
        self.timer = timer
        self.witness: np.ndarray | None = None
        self.n_boxes = 0
        self.n_domains = 0
        self.gave_up = 0

    @property
    def band(self) -> np.ndarray:
        """``[K-1]``: what the float32 terms cost each one-pass margin bound (computed when needed)."""
        if self._band is None:
            self._band = self._band_of()
        return self._band

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
        if m[i] < -WITNESS_TOL:
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

    def verdict(self, detail: str) -> Verdict:
        if self.witness is not None:
            return Verdict("refuted", self.witness, self.timer.elapsed(), detail)
        return Verdict("unknown", None, self.timer.elapsed(), detail, band=self.gave_up_band > 0)

    def settled(self, detail: str) -> Verdict:
        """The verdict once the search has run out of work: proven unless boxes were given up."""
        if self.gave_up:
            detail += f", {self.gave_up} boxes undecided at depth {MAX_DEPTH}"
        if self.gave_up_band:
            detail += f", {self.gave_up_band} boxes inside the float32 band"
        if self.gave_up or self.gave_up_band:
            return self.verdict(detail)
        return Verdict("proven", None, self.timer.elapsed(), detail)

    # -- entry ------------------------------------------------------------------------------------
    def run(self, lb: np.ndarray, a_in: np.ndarray | None) -> Verdict:
        if self.t == 1:
            return self._run_t1()
        return self._run_bnb(lb, a_in)

    def _pixel_boxes(self, pixels: np.ndarray) -> Boxes:
        prob = self.prob
        S = prob.pixel_scalars[pixels]
        real = S >= 0
        Sc = np.where(real, S, 0)
        dlo = np.where(real, prob.lo[Sc] - prob.x0[Sc], 0.0)
        dhi = np.where(real, prob.hi[Sc] - prob.x0[Sc], 0.0)
        return Boxes(np.where(real, S, -1), dlo, dhi, np.zeros(len(pixels), dtype=np.int64))

    # -- attacks ---------------------------------------------------------------------------------
    def _corner_offsets(self, boxes: Boxes, limit: int = MAX_CORNERS) -> list[np.ndarray]:
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
            m = margins(self.net, self.ref, X)
            if self.check(X):
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

    # -- boxes ------------------------------------------------------------------------------------
    def _box_chunk(self, boxes: Boxes) -> int:
        f = boxes.S.shape[1]
        width = sum(nd.size for nd in self.net.nodes)
        return max(1, BOX_CHUNK_FLOATS // max(1, 2 * (f + 1) * width))

    def _process_boxes(self, boxes: Boxes) -> Boxes | None:
        """Bound one batch of boxes; return the children of the undecided ones (None: witness)."""
        prob = self.prob
        self.n_boxes += len(boxes)
        lb, hint = box_bounds(prob, boxes, self.ref)
        und = np.nonzero(lb.min(axis=1) <= 0)[0]
        if und.size == 0:
            return boxes.take(np.zeros(0, dtype=np.int64))
        ub = boxes.take(und)
        # candidate counterexamples: centre, the corner the linear bound points at, corners
        k = np.argmin(lb[und], axis=1)
        h = hint[und, k, :]  # [U, F]
        cands = [0.5 * (ub.dlo + ub.dhi), np.where(h > 0, ub.dlo, ub.dhi)]
        if ub.S.shape[1] <= 3:
            cands += self._corner_offsets(ub)
        for off in cands:
            if self.check(ub.points(prob, off)):
                return None
        # a box float64 proves but the band does not: bisect a few times (the bound may be loose),
        # then give it up; the true margin may lie inside the band, where splitting cannot help
        in_band = (lb[und] + self.band).min(axis=1) > 0
        stuck = in_band & (ub.depth >= BAND_DEPTH)
        self.gave_up_band += int(stuck.sum())
        ub = ub.take(~stuck)
        # bisect along the widest free scalar
        width = ub.dhi - ub.dlo
        f = np.argmax(width, axis=1)
        rows = np.arange(len(ub))
        w = width[rows, f]
        ok = (ub.depth < MAX_DEPTH) & (w > 0)
        self.gave_up += int((~ok).sum())
        ub = ub.take(ok)
        f, rows = f[ok], np.arange(len(ub))
        mid = 0.5 * (ub.dlo[rows, f] + ub.dhi[rows, f])
        left = Boxes(ub.S.copy(), ub.dlo.copy(), ub.dhi.copy(), ub.depth + 1)
        right = Boxes(ub.S.copy(), ub.dlo.copy(), ub.dhi.copy(), ub.depth + 1)
        left.dhi[rows, f] = mid
        right.dlo[rows, f] = mid
        return Boxes.concat([left, right])

    def _drain_boxes(self, queue: list[Boxes], all_: bool = True) -> str | None:
        """Process queued boxes until empty (or time out). Returns 'refuted'/'timeout'/None."""
        while queue:
            if self.timer.out():
                return "timeout"
            boxes = queue.pop()
            n = self._box_chunk(boxes)
            if len(boxes) > n:
                queue.append(boxes.take(np.arange(n, len(boxes))))
                boxes = boxes.take(np.arange(n))
            kids = self._process_boxes(boxes)
            if kids is None:
                return "refuted"
            if len(kids):
                queue.append(kids)
            if not all_:
                break
        return None

    def _run_t1(self) -> Verdict:
        found, _ = self._attack_single()
        if found:
            return self.verdict("attack: one pixel")
        queue = [self._pixel_boxes(np.arange(self.prob.P))]
        res = self._drain_boxes(queue)
        detail = f"split: {self.n_boxes} boxes"
        if res == "refuted":
            return self.verdict(detail)
        if res == "timeout":
            return self.verdict(detail + ", timeout")
        return self.settled(detail)

    # -- branch and bound over pixels (t >= 2) -----------------------------------------------------
    def _boxes_from_domains(self, dom: Domains) -> Boxes:
        prob = self.prob
        parts = []
        for i in range(len(dom)):
            pix = np.nonzero(dom.forced[i])[0]
            sc = prob.pixel_scalars[pix].reshape(-1)
            sc = sc[sc >= 0]
            if sc.size == 0:
                sc = np.array([-1])
            real = sc >= 0
            scc = np.where(real, sc, 0)
            dlo = np.where(real, dom.lo[i, scc] - prob.x0[scc], 0.0)
            dhi = np.where(real, dom.hi[i, scc] - prob.x0[scc], 0.0)
            parts.append(Boxes(sc[None], dlo[None], dhi[None], np.zeros(1, dtype=np.int64)))
        return Boxes.concat(parts)

    def _fixed_pixels(self, dom: Domains) -> np.ndarray:
        """[B, P] pixels whose scalars are all pinned to x0."""
        prob = self.prob
        pinned = (dom.lo == prob.x0) & (dom.hi == prob.x0)  # [B, D]
        sc = prob.pixel_scalars
        vals = np.where(prob.scalar_mask[None], pinned[:, np.where(sc >= 0, sc, 0)], True)
        return vals.all(axis=-1)

    def _linear_attack_point(self, dom: Domains, a: np.ndarray) -> np.ndarray:
        """The point of each domain minimising the linear lower bound ``a [B, D]`` of its worst row."""
        prob = self.prob
        x = np.broadcast_to(prob.x0, a.shape).copy()
        pick = np.where(a > 0, dom.lo, dom.hi)
        dp = pixel_terms(prob, dom, a[:, None, :])[:, 0, :]
        for i in range(len(dom)):
            chosen = list(np.nonzero(dom.forced[i])[0])
            k = int(dom.budget[i])
            free = np.where(dom.forced[i], np.inf, np.minimum(dp[i], 0.0))
            order = np.argsort(free)[:k]
            chosen += [p for p in order if free[p] < 0]
            for p in chosen:
                sc = prob.pixel_scalars[p]
                sc = sc[sc >= 0]
                x[i, sc] = pick[i, sc]
        return x

    def _run_bnb(self, lb: np.ndarray, a_in: np.ndarray | None) -> Verdict:
        found, single = self._attack_single()
        if found:
            return self.verdict("attack: one pixel")
        if self._attack_beam(single):
            return self.verdict("attack: beam")
        prob = self.prob
        stack: list[Domains] = [Domains.ball(prob, self.t)]
        boxq: list[Boxes] = []
        first = True
        # t = 2: branch and bound gets a share of the time; if it has not finished by then, every
        # pair of pixels is bounded as a box instead (predictable cost, complete)
        switch_at = None
        if self.t == 2:
            rest = PAIR_SWITCH_SECONDS if self.timer.deadline is None else (self.timer.deadline - time.perf_counter())
            switch_at = time.perf_counter() + PAIR_SWITCH_SHARE * max(0.0, rest)
        while stack or boxq:
            if self.timer.out():
                return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes, timeout")
            if switch_at is not None and time.perf_counter() >= switch_at:
                return self._run_pairs()
            if boxq and (not stack or sum(len(b) for b in boxq) >= 64):
                res = self._drain_boxes(boxq, all_=not stack)
                if res == "refuted":
                    return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes")
                if res == "timeout":
                    return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes, timeout")
                continue
            dom = stack.pop()
            if len(dom) > DOMAIN_BATCH:
                stack.append(dom.take(np.arange(DOMAIN_BATCH, len(dom))))
                dom = dom.take(np.arange(DOMAIN_BATCH))
            self.n_domains += len(dom)
            if first and a_in is not None:
                dlb, da = lb, a_in
                first = False
            else:
                dlb, da, _ = spec_bounds(prob, dom, self.ref, want_input=True)
            und = np.nonzero(dlb.min(axis=1) <= 0)[0]
            if und.size == 0:
                continue
            dom = dom.take(und)
            dlb = dlb[und]
            assert da is not None
            worst = np.argmin(dlb, axis=1)
            a = da[und, worst, :]  # [U, D]
            if self.check(self._linear_attack_point(dom, a)):
                return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes")
            fixed = self._fixed_pixels(dom)
            dp = pixel_terms(prob, dom, a[:, None, :])[:, 0, :]
            cand = ~dom.forced & ~fixed
            infl = prob.to_pixels(np.abs(a) * (dom.hi - dom.lo))
            score = np.where(cand, np.minimum(dp, 0.0) - 1e-9 * infl, np.inf)
            excl_kids, force_kids, boxes_now = [], [], []
            for i in range(len(dom)):
                n_cand = int(cand[i].sum())
                if n_cand <= int(dom.budget[i]):
                    # the budget does not bind: every remaining pixel is free -> one box, the hull
                    # of "unchanged" and "anywhere in [lo, hi]" for those pixels
                    forced = dom.forced[i] | cand[i]
                    sc = np.isin(prob.pixel, np.nonzero(cand[i])[0])
                    lo_h = np.where(sc, np.minimum(dom.lo[i], prob.x0), dom.lo[i])
                    hi_h = np.where(sc, np.maximum(dom.hi[i], prob.x0), dom.hi[i])
                    boxes_now.append(Domains(lo_h[None], hi_h[None], forced[None], np.zeros(1, np.int64)))
                    continue
                p = int(np.argmin(score[i]))
                sc = prob.pixel_scalars[p]
                sc = sc[sc >= 0]
                lo_e, hi_e = dom.lo[i].copy(), dom.hi[i].copy()
                lo_e[sc] = prob.x0[sc]
                hi_e[sc] = prob.x0[sc]
                excl_kids.append(Domains(lo_e[None], hi_e[None], dom.forced[i : i + 1].copy(), dom.budget[i : i + 1].copy()))
                f2 = dom.forced[i].copy()
                f2[p] = True
                kid = Domains(dom.lo[i : i + 1].copy(), dom.hi[i : i + 1].copy(), f2[None], dom.budget[i : i + 1] - 1)
                if int(kid.budget[0]) == 0:
                    boxes_now.append(kid)
                else:
                    force_kids.append(kid)
            if boxes_now:
                boxq.append(self._boxes_from_domains(Domains.concat(boxes_now)))
            if excl_kids:
                stack.append(Domains.concat(excl_kids))
            if force_kids:
                stack.append(Domains.concat(force_kids))
        return self.settled(f"split: {self.n_domains} domains, {self.n_boxes} boxes")

    # -- every pair of pixels (t = 2) ---------------------------------------------------------------
    def _run_pairs(self) -> Verdict:
        prob = self.prob
        P = prob.P
        singles_needed = not bool(np.all((prob.lo <= prob.x0) & (prob.x0 <= prob.hi)))
        iu, ju = np.triu_indices(P, k=1)
        total = iu.size
        queue: list[Boxes] = []
        if singles_needed:
            # a pair box holds "only one of them changed" only when every box holds x0
            queue.append(self._pixel_boxes(np.arange(P)))
        done = 0
        while done < total or queue:
            if self.timer.out():
                return self.verdict(f"pairs: {done}/{total} enumerated, {self.n_boxes} boxes, timeout")
            if not queue:
                sel = slice(done, min(total, done + PAIR_CHUNK))
                done = sel.stop
                a, b = self._pixel_boxes(iu[sel]), self._pixel_boxes(ju[sel])
                queue.append(Boxes(np.concatenate([a.S, b.S], axis=1), np.concatenate([a.dlo, b.dlo], axis=1),
                                   np.concatenate([a.dhi, b.dhi], axis=1), np.zeros(a.S.shape[0], dtype=np.int64)))
            res = self._drain_boxes(queue, all_=False)
            if res == "refuted":
                return self.verdict(f"pairs: {self.n_boxes} boxes")
            if res == "timeout":
                return self.verdict(f"pairs: {done}/{total} enumerated, {self.n_boxes} boxes, timeout")
        return self.settled(f"pairs: {total} pairs, {self.n_boxes} boxes")
