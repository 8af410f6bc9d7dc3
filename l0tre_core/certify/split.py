"""The search behind ``certify`` (``certify/search.py``): ``_Search``.

- t = 1: every single-pixel box bounded in one batch (``box_bounds``), undecided boxes bisected
  along their widest free scalar (``_process_boxes``, ``_drain_boxes``);
- t >= 2: branch and bound over pixels ("p unchanged" versus "p changed, budget t - 1") on
  generalised domains (``spec_bounds``), domains whose budget reaches 0 becoming boxes;
  once it has used its share of the time, the covering blocks of ``certify/cover.py`` (complete:
  every t-subset of pixels lies in a proven block or ends as a box).

The attacks are the mixin ``_Attacks`` (``certify/attacks.py``), the blocks ``_Cover``. The tuning
constants live in ``certify/search.py`` and are read through it (``knobs``) when used.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from threadpoolctl import ThreadpoolController

from l0tre_core.certify import search as knobs
from l0tre_core.certify._types import Verdict
from l0tre_core.certify.arrays import NUMPY
from l0tre_core.certify.attacks import _Attacks
from l0tre_core.certify.bounds import spec_bounds
from l0tre_core.certify.boxes import Boxes, box_bounds, clean_margins
from l0tre_core.certify.cover import _Cover
from l0tre_core.certify.problem import Domains, Problem, pixel_terms
from l0tre_core.certify.search import _Timer

CORNER_ALL_INPUTS = 1024  # inputs up to this size: all corners of 3-scalar boxes are checked
FIRST_BATCH = 8  # boxes in the first batch under a time limit: it measures the seconds per box
SHARED_BATCH = 16  # boxes at least per thread where a batch is shared between threads (``_Search._bounds``)


class _Search(_Attacks, _Cover):
    def __init__(self, prob: Problem, ref: int, t: int, timer: _Timer, threads: int = 0) -> None:
        self.prob = prob
        self.n_threads = _thread_count(prob, threads)
        self._pool: ThreadPoolExecutor | None = None  # while ``_threads`` holds it
        self.gave_up_band = 0
        self.net = prob.net
        self.ref = ref
        self.t = t
        self.timer = timer
        self.witness: np.ndarray | None = None
        self.n_boxes = 0
        self.n_domains = 0
        self.gave_up = 0
        self.sec_per_box: float | None = None  # of the last batch (``_drain_boxes``)
        self.n_tasks = 0  # covering tasks at the start, blocks bounded, seconds per block (``_Cover``)
        self.n_blocks = 0
        self.sec_per_block: float | None = None
        self.n_presplit = 0
        self.n_block_scalars = 0
        self.cover_scale = 1.0  # the predictor's calibration (``_Cover._calibrate``)
        self.cover_hopeless = 0.0  # the predicted load above which tasks were split unbounded
        self._t1_lb: np.ndarray | None = None  # t = 1: each pixel box's bounds (``_keep_t1_bounds``)

    def verdict(self, detail: str) -> Verdict:
        if self.witness is not None:
            return Verdict("refuted", self.witness, self.timer.elapsed(), detail)
        return Verdict("unknown", None, self.timer.elapsed(), detail, band=self.gave_up_band > 0)

    def settled(self, detail: str) -> Verdict:
        """The verdict once the search has run out of work: proven unless boxes were given up."""
        if self.gave_up:
            detail += f", {self.gave_up} boxes undecided at depth {knobs.MAX_DEPTH}"
        if self.gave_up_band:
            detail += f", {self.gave_up_band} boxes inside the float32 band"
        if self.gave_up or self.gave_up_band:
            return self.verdict(detail)
        return Verdict("proven", None, self.timer.elapsed(), detail)

    # -- entry ------------------------------------------------------------------------------------
    def run(self, lb: np.ndarray, a_in: np.ndarray | None) -> Verdict:
        with self._threads():
            if self.t == 1:
                return self._run_t1()
            return self._run_bnb(lb, a_in)

    # -- threads ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _threads(self) -> Iterator[ThreadPoolExecutor | None]:
        """The pool that bounds batches of boxes (``_bounds``) and of blocks (``_Cover``) at once
        (None with one thread), held for the whole search; nested uses share it."""
        if self._pool is not None or self.n_threads == 1:
            yield self._pool
            return
        with ThreadPoolExecutor(self.n_threads, thread_name_prefix="l0tre-bounds") as pool:
            self._pool = pool
            try:
                yield pool
            finally:
                self._pool = None

    def _one_blas_thread(self) -> contextlib.AbstractContextManager[object]:
        """While batches are bounded in the pool's threads, one BLAS thread each: on two cores,
        two batches at once with one BLAS thread each took 0.77 s where one at a time took 1.25 s
        (1.38 s with two BLAS threads). Elsewhere (the cover's probes, branch and bound) BLAS keeps
        the threads it had before the pool was shared."""
        if self._pool is None:
            return contextlib.nullcontext()
        return _blas().limit(limits=1, user_api="blas")

    def _bounds(self, boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
        """``box_bounds`` of a batch, shared between the pool's threads where it is large enough."""
        n = 1 if self._pool is None else min(self.n_threads, len(boxes) // SHARED_BATCH)
        if n <= 1:
            return box_bounds(self.prob, boxes, self.ref)
        with self._one_blas_thread():
            parts = [self._pool.submit(box_bounds, self.prob, boxes.take(rows), self.ref)  # type: ignore[union-attr]
                     for rows in np.array_split(np.arange(len(boxes)), n)]
            done = [part.result() for part in parts]
        return np.concatenate([lb for lb, _ in done]), np.concatenate([hint for _, hint in done])

    # -- boxes ------------------------------------------------------------------------------------
    def _memory_chunk(self, f: int) -> int:
        """Boxes (or blocks) of ``f`` free scalars per batch that memory allows (a GPU's batches
        are larger: its cost per call is mostly fixed, ``ArrayBackend.chunk_scale``)."""
        width = sum(nd.size for nd in self.net.nodes)
        return max(1, knobs.BOX_CHUNK_FLOATS * self.prob.arrays.chunk_scale // max(1, 2 * (f + 1) * width))

    def _box_chunk(self, f: int, sec_per: float | None) -> int:
        """``_memory_chunk``, and under a deadline what the time left affords at ``sec_per``
        seconds a box (a batch cannot be interrupted; before any was timed, a small first batch
        measures it)."""
        n = self._memory_chunk(f)
        if self.timer.deadline is not None:
            if sec_per is None:
                return min(n, FIRST_BATCH)
            return max(1, int(min(n, (self.timer.deadline - time.perf_counter()) / sec_per)))  # (may be inf)
        return n

    @property
    def clean_margins(self) -> np.ndarray:
        """``[K-1]``: ``z_ref - z_k`` at the clean input (computed once per problem)."""
        return clean_margins(self.prob, self.ref)

    def _process_boxes(self, boxes: Boxes) -> Boxes | None:
        """Bound one batch of boxes; return the children of the undecided ones (None: witness)."""
        prob = self.prob
        self.n_boxes += len(boxes)
        lb, hint = self._bounds(boxes)
        if self.t == 1:
            top = np.nonzero((boxes.depth == 0) & (boxes.S[:, 0] >= 0))[0]
            if top.size:
                self._keep_t1_bounds(boxes.S[top, 0], lb[top])
        und = np.nonzero(lb.min(axis=1) <= 0)[0]
        if und.size == 0:
            return boxes.take(np.zeros(0, dtype=np.int64))
        ub = boxes.take(und)
        # candidate counterexamples: centre, the corner the linear bound points at, corners
        k = np.argmin(lb[und], axis=1)
        h = hint[und, k, :]  # [U, F]
        cands = [0.5 * (ub.dlo + ub.dhi), np.where(h > 0, ub.dlo, ub.dhi)]
        # every corner too when there are few; a colour pixel's 8 corners each cost a forward
        # pass of the whole network per box, where the hint's corner is the likely worst one
        if ub.S.shape[1] <= 2 or (ub.S.shape[1] <= 3 and self.net.n_inputs <= CORNER_ALL_INPUTS):
            cands += self._corner_offsets(ub)
        for off in cands:
            if self.check(ub.points(prob, off)):
                return None
        # a box float64 proves but the band does not: bisect a few times (the bound may be loose),
        # then give it up; the true margin may lie inside the band, where splitting cannot help.
        # Once a box is deep enough, the box itself is bounded without the float32 terms: the
        # one-pass band over the ball overstates a box's band (light ball bounds even more so)
        deep = np.nonzero(ub.depth >= knobs.BAND_DEPTH)[0]
        stuck = np.zeros(len(ub), dtype=bool)
        if deep.size:
            prob.exact_arithmetic = True
            try:
                lb64, _ = box_bounds(prob, ub.take(deep), self.ref)
            finally:
                prob.exact_arithmetic = False
            stuck[deep] = lb64.min(axis=1) > 0
        self.gave_up_band += int(stuck.sum())
        ub = ub.take(~stuck)
        # bisect along the widest free scalar
        width = ub.dhi - ub.dlo
        f = np.argmax(width, axis=1)
        rows = np.arange(len(ub))
        w = width[rows, f]
        ok = (ub.depth < knobs.MAX_DEPTH) & (w > 0)
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
            n = self._box_chunk(boxes.S.shape[1], self.sec_per_box)
            if len(boxes) > n:
                queue.append(boxes.take(np.arange(n, len(boxes))))
                boxes = boxes.take(np.arange(n))
            started = time.perf_counter()
            kids = self._process_boxes(boxes)
            self.sec_per_box = (time.perf_counter() - started) / max(1, len(boxes))
            if kids is None:
                return "refuted"
            if len(kids):
                queue.append(kids)
            if not all_:
                break
        return None

    def _run_t1(self) -> Verdict:
        # No separate corner attack: the boxes below check the corners of every box they cannot
        # prove, and the engine's discrete sweep has tried every single-pixel corner already
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
        t1 = self._t1_bounds()
        if t1 is not None and (t1 > 0).all():
            # t = 1 was proven on this input just before: no single pixel flips it, and its pixel
            # boxes' bounds rank the pixels for the beam (the corner attack would cost a model
            # evaluation per corner of every pixel, for nothing)
            single = t1.min(axis=1)
        else:
            found, single = self._attack_single()
            if found:
                return self.verdict("attack: one pixel")
        if self._attack_beam(single):
            return self.verdict("attack: beam")
        prob = self.prob
        if lb.min() < -knobs.COVER_DIRECT * float(self.clean_margins.min()):
            # the one-pass bound is off by more than the clean margin (CNNs): branch and bound on
            # the ball's bounds would not finish; the blocks start at once
            return self._cover_verdict()
        stack: list[Domains] = [Domains.ball(prob, self.t)]
        boxq: list[Boxes] = []
        first = True
        # branch and bound gets a share of the time (one-pass bounds prove MLPs quickly); if it has
        # not finished by then, the covering blocks take over (complete, and far faster on CNNs,
        # where the ball's bounds are loose and branch and bound makes little progress)
        rest = knobs.COVER_SWITCH_SECONDS if self.timer.deadline is None else (self.timer.deadline - time.perf_counter())
        switch_at = time.perf_counter() + knobs.COVER_SWITCH_SHARE * max(0.0, rest)
        while stack or boxq:
            if self.timer.out():
                return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes, timeout")
            if time.perf_counter() >= switch_at:
                return self._cover_verdict()
            if boxq and (not stack or sum(len(b) for b in boxq) >= 64):
                res = self._drain_boxes(boxq, all_=not stack)
                if res == "refuted":
                    return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes")
                if res == "timeout":
                    return self.verdict(f"split: {self.n_domains} domains, {self.n_boxes} boxes, timeout")
                continue
            dom = stack.pop()
            if len(dom) > knobs.DOMAIN_BATCH:
                stack.append(dom.take(np.arange(knobs.DOMAIN_BATCH, len(dom))))
                dom = dom.take(np.arange(knobs.DOMAIN_BATCH))
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

    # -- covering blocks (t >= 2) ---------------------------------------------------------------------
    def _cover_verdict(self) -> Verdict:
        res = self._run_cover()
        detail = (f"cover: {self.n_tasks} tasks (scale {self.cover_scale:g}, hopeless above {self.cover_hopeless:g}), "
                  f"{self.n_blocks} blocks of {self.n_block_scalars} scalars ({self.n_presplit} split unbounded), "
                  f"{self.n_boxes} boxes")
        if res == "refuted":
            return self.verdict(detail)
        if res == "timeout":
            return self.verdict(detail + ", timeout")
        return self.settled(detail)


_CONTROLLER: ThreadpoolController | None = None


def _blas() -> ThreadpoolController:
    """threadpoolctl's view of the loaded BLAS libraries, found once (finding them costs
    milliseconds; a limit from it, microseconds)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _thread_count(prob: Problem, threads: int) -> int:
    """Batches bounded at once: ``BOUND_THREADS`` up to the cores, and up to ``threads`` (> 0)
    where the caller was given fewer; one where boxes are bounded on another device."""
    if prob.arrays is not NUMPY:
        return 1
    n = cores()
    return max(1, min(knobs.BOUND_THREADS, n, threads if threads > 0 else n))
