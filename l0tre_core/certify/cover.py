"""Covering blocks for t >= 2 (the mixin ``_Cover`` of ``_Search``): Calzone's idea, sized by what
each pixel costs.

The L0 ball of size t is the union of the boxes that free t given pixels; a *block* that frees
more pixels at once holds every such box inside it, so one proven block proves all the t-subsets
of its pixels (C(k, t) boxes for the price of one, about k times dearer).

- A pixel's *load* is what its single-pixel box costs each margin, in clean margins (``_load``;
  the t = 1 certificate's own box bounds when the engine has just run it). Loads add up to a
  prediction of a block, scaled per input by a few random blocks (``_calibrate``).
- Pixels sorted by load are cut into consecutive groups (``groups``): light pixels in large
  groups, heavy ones alone. At t = 2 the groups are the points of the affine plane AG(2, q) and
  its lines the blocks (``plane``: every pair of groups on exactly one line, each group on q + 1
  lines; q grows while a few probed lines fail, ``_Cover._plane``); at t >= 3 every multiset of
  t groups is a *task* (the t-subsets with one pixel in each).
- A block that fails, or is predicted hopeless, is split (``kids``) down to blocks of t pixels,
  which are ordinary boxes, bisected and attacked by ``_Search._process_boxes``.

A block is bounded as what it must prove: the L0 ball of size t over its own pixels
(``box_bounds(..., budget=t)``, the top-k rule on its margins and narrow layers), not the box that
frees all of them at once. That set lies in the ball the float32 terms were prepared for, and is
smaller than the box: on ConvSmall, blocks of 3x the pixels are proven (t = 2: 590 blocks per
input where the boxes took 2,400-8,700). A failing block also proposes the point made of its t
worst pixels (the forward-mode hint's), a real member of the L0 set, checked like every
candidate. The loads and the calibration only steer the search: a wrong one costs time, never
soundness, and the cover stays complete.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from l0tre_core.certify import search as knobs
from l0tre_core.certify.boxes import Boxes, box_bounds

if TYPE_CHECKING:
    from l0tre_core.certify.problem import Problem

# single-pixel box bounds of recent t = 1 certificates, reused by the next level's ``_load``: a
# heuristic input (grouping only), so a stale entry costs speed, never soundness
_T1_BOUNDS: dict[tuple[int, int, int], np.ndarray] = {}
_T1_KEEP = 8
# t = 2: the plane's order grows while its lines fail (``_Cover._plane``), up to this many points
# per pixel
PLANE_SPREAD = 4

Group = tuple[int, int]  # a range [a, b) of the pixels sorted by sensitivity
Task = tuple[Group, ...]  # t groups, sorted; equal groups repeat


@dataclass(frozen=True)
class Line:
    """A line of the affine plane over the groups (t = 2), or a piece of one: its block covers
    every pair across two of its groups, and the pairs inside the groups it ``owns``."""

    parts: tuple[Group, ...]
    owns: tuple[Group, ...]


@dataclass(frozen=True)
class Cross:
    """The pairs with one pixel in a group of ``a`` and one in a group of ``b`` (t = 2)."""

    a: tuple[Group, ...]
    b: tuple[Group, ...]


Job = Union[Task, Line, Cross]


def groups(load: np.ndarray, share: float, max_size: int) -> list[Group]:
    """Cut the pixels, in order, into consecutive groups whose summed ``load [P, R]`` stays within
    ``share`` in every row and whose size stays within ``max_size``; a pixel over the share on its
    own is a group of one."""
    out: list[Group] = []
    start = 0
    acc = np.zeros(load.shape[1])
    for i in range(load.shape[0]):
        if i > start and ((acc + load[i]).max() > share or i - start >= max_size):
            out.append((start, i))
            start, acc = i, np.zeros(load.shape[1])
        acc += load[i]
    if start < load.shape[0]:
        out.append((start, int(load.shape[0])))
    return out


def initial_tasks(parts: list[Group], t: int) -> list[Task]:
    """Every multiset of ``t`` groups that holds a t-subset (a group repeated r times needs r pixels)."""
    picks = itertools.combinations_with_replacement(range(len(parts)), t)
    return [task for task in (tuple(parts[i] for i in c) for c in picks) if _feasible(task)]


def _feasible(task: Task) -> bool:
    return all(b - a >= task.count((a, b)) for (a, b) in set(task))


def members(job: Job) -> set[Group]:
    if isinstance(job, Line):
        return set(job.parts)
    if isinstance(job, Cross):
        return set(job.a) | set(job.b)
    return set(job)


def _pixels(gs: tuple[Group, ...]) -> int:
    return sum(b - a for (a, b) in gs)


def block_size(job: Job) -> int:
    return sum(b - a for (a, b) in members(job))


def kids(job: Job) -> list[Job]:
    """What covers a job whose block failed, in smaller blocks: a line's groups in halves (the
    lighter groups apart from the heavier, where a line usually fails) and the pairs across them;
    a cross its larger side in halves; a task its ``split``. A child with the parent's block (the
    cross of a line's halves, the task of a cross of two groups) is split again at once."""
    if isinstance(job, Line):
        if len(job.parts) == 1:
            g = job.parts[0]
            return split((g, g)) if job.owns and g[1] - g[0] >= 2 else []
        parts = tuple(sorted(job.parts))
        h = len(parts) // 2
        lo, hi = parts[:h], parts[h:]
        return ([Line(lo, tuple(g for g in job.owns if g in lo)), Line(hi, tuple(g for g in job.owns if g in hi))]
                + kids(Cross(lo, hi)))
    if isinstance(job, Cross):
        if len(job.a) == 1 and len(job.b) == 1:  # the task of these two groups: the same block
            return split(tuple(sorted((job.a[0], job.b[0]))))
        a_first = len(job.b) == 1 or (len(job.a) > 1 and _pixels(job.a) >= _pixels(job.b))
        a, b = (job.a, job.b) if a_first else (job.b, job.a)
        h = len(a) // 2
        return [Cross(a[:h], b), Cross(a[h:], b)]
    return list(split(job))


def _primes_from(q: int):  # type: ignore[no-untyped-def]
    while True:
        if q >= 2 and all(q % d for d in range(2, int(q**0.5) + 1)):
            yield q
        q += 1


def plane_order(load: np.ndarray, share: float, max_size: int, least: int = 2) -> tuple[int, list[Group]]:
    """The order q of ``plane`` and its groups."""
    for q in _primes_from(least):
        parts = groups(load, share / q, max_size)
        if len(parts) <= q * q:
            return q, parts
    raise AssertionError("unreachable")


def plane(load: np.ndarray, share: float, max_size: int, least: int = 2) -> list[Line]:
    """t = 2: the groups as the points of the affine plane AG(2, q), q prime, and its q^2 + q
    lines as blocks. Every pair of points lies on exactly one line, and each point on q + 1 lines,
    where pairs of groups put each point in one block per other group: for blocks of the same
    load, about half the scalars to bound. q is the least prime from ``least`` whose plane holds
    the groups cut at ``share / q`` (so a line's q groups stay within ``share``); the vertical
    lines own the pairs inside their groups. Points are filled column by column (``i // q``), so
    with more points than groups a line holds one group of each filled column: a larger ``q``
    makes smaller lines, and more of them."""
    return plane_lines(*plane_order(load, share, max_size, least))


def plane_lines(q: int, parts: list[Group]) -> list[Line]:
    """The lines of ``plane`` for its order ``q`` and groups ``parts``."""
    point = {i: g for i, g in enumerate(parts)}
    lines: list[Line] = []
    for a in range(q):
        for b in range(q):
            pts = [x * q + (a * x + b) % q for x in range(q)]
            on = tuple(point[i] for i in pts if i in point)
            if len(on) >= 2:
                lines.append(Line(on, ()))
    for c in range(q):
        on = tuple(point[c * q + y] for y in range(q) if c * q + y in point)
        if on:
            lines.append(Line(on, on))
    return lines


def split(task: Task) -> list[Task]:
    """Children covering the task's t-subsets: its largest group in halves, each way its r copies
    can fall into them. A child whose block is the parent's (both halves of a repeated group) is
    split again at once: bounding it would repeat the parent's failure."""
    g = max(set(task), key=lambda ab: (ab[1] - ab[0], ab))
    a, b = g
    m = (a + b) // 2
    rest = [x for x in task if x != g]
    r = len(task) - len(rest)
    out: list[Task] = []
    for n_left in range(r + 1):
        kid = tuple(sorted(rest + [(a, m)] * n_left + [(m, b)] * (r - n_left)))
        if not _feasible(kid):
            continue
        if n_left and r - n_left and block_size(kid) == block_size(task):
            out.extend(split(kid))
        else:
            out.append(kid)
    return out


class _Cover:
    """Mixin of ``_Search`` (``certify/split.py``): the covering search at t >= 2."""

    prob: "Problem"
    t: int
    ref: int
    _t1_lb: np.ndarray | None

    def _t1_key(self) -> tuple[int, int, int]:
        prob = self.prob
        return (id(prob.net), self.ref, hash((prob.x0.tobytes(), prob.lo.tobytes(), prob.hi.tobytes())))

    def _keep_t1_bounds(self, scalars: np.ndarray, lb: np.ndarray) -> None:
        """At t = 1: the bounds ``lb [B, K-1]`` of whole pixel boxes (first scalars ``scalars``);
        once every pixel has one, kept for the next level."""
        prob = self.prob
        if self._t1_lb is None:
            self._t1_lb = np.full((prob.P, lb.shape[1]), np.nan)
        self._t1_lb[prob.pixel[scalars]] = lb
        if not np.isnan(self._t1_lb).any():
            _T1_BOUNDS[self._t1_key()] = self._t1_lb
            while len(_T1_BOUNDS) > _T1_KEEP:
                _T1_BOUNDS.pop(next(iter(_T1_BOUNDS)))

    def _t1_bounds(self) -> np.ndarray | None:
        """``[P, K-1]``: the pixel boxes' bounds t = 1 kept for this input, if it ran just before."""
        return _T1_BOUNDS.get(self._t1_key())

    def _load(self) -> np.ndarray | None:
        """``[P, K-1]``: what changing each pixel alone can cost each margin, in clean margins: the
        clean margin minus its single-pixel box's lower bound (None: out of time). Summed over a
        block's pixels it predicts the block (on the zoo's CNNs: below 0.8 all were proven, above
        1.2 none)."""
        prob = self.prob
        m0 = np.maximum(self.clean_margins, 1e-12)  # type: ignore[attr-defined]
        lb = self._t1_bounds()  # the engine certified t = 1 just before
        if lb is None:
            boxes = self._pixel_boxes(np.arange(prob.P))  # type: ignore[attr-defined]
            n = self._memory_chunk(boxes.S.shape[1])  # type: ignore[attr-defined]
            parts = []
            for s in range(0, prob.P, n):
                if self.timer.out():  # type: ignore[attr-defined]
                    return None
                parts.append(box_bounds(prob, boxes.take(np.arange(s, min(prob.P, s + n))), self.ref)[0])
            lb = np.concatenate(parts)
        return np.maximum(m0[None, :] - lb, 0.0) / m0[None, :]

    def _block_boxes(self, tasks: list[Job], order: np.ndarray) -> Boxes:
        """The blocks of ``tasks`` as boxes: each pixel's scalars over the hull of its range and x0
        (the unchanged value belongs to every t-subset's box, and x0 may sit outside [lo, hi])."""
        prob = self.prob
        rows = []
        for task in tasks:
            pix = np.concatenate([order[a:b] for (a, b) in sorted(members(task))])
            sc = prob.pixel_scalars[pix].reshape(-1)
            rows.append(sc[sc >= 0])
        f = max(r.size for r in rows)
        S = np.full((len(rows), f), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            S[i, : r.size] = r
        real = S >= 0
        Sc = np.where(real, S, 0)
        dlo = np.where(real, np.minimum(prob.lo[Sc] - prob.x0[Sc], 0.0), 0.0)
        dhi = np.where(real, np.maximum(prob.hi[Sc] - prob.x0[Sc], 0.0), 0.0)
        return Boxes(S, dlo, dhi, np.zeros(len(rows), dtype=np.int64))

    def _worst_points(self, boxes: Boxes, lb: np.ndarray, hint: np.ndarray) -> np.ndarray:
        """Per failing block, the point that changes its t pixels of most negative hint towards
        the corner the hint points at: a member of the L0 set (at most t pixels changed)."""
        prob = self.prob
        k = np.argmin(lb, axis=1)
        h = hint[np.arange(len(boxes)), k, :]  # [B, F]
        real = boxes.S >= 0
        gain = np.where(real, np.minimum(h * boxes.dlo, h * boxes.dhi), 0.0)  # per scalar, <= 0
        pix = np.where(real, prob.pixel[np.where(real, boxes.S, 0)], -1)
        x = np.broadcast_to(prob.x0, (len(boxes), prob.x0.size)).copy()
        for i in range(len(boxes)):
            per = np.zeros(prob.P)
            np.add.at(per, pix[i][real[i]], gain[i][real[i]])
            worst = np.argsort(per)[: self.t]
            worst = worst[per[worst] < 0]
            sel = real[i] & np.isin(pix[i], worst)
            sc = boxes.S[i][sel]
            off = np.where(h[i][sel] > 0, boxes.dlo[i][sel], boxes.dhi[i][sel])
            x[i, sc] = np.clip(prob.x0[sc] + off, prob.lo[sc], prob.hi[sc])
        return x

    def _calibrate(self, load: np.ndarray, order: np.ndarray) -> float | None:
        """How far the additive prediction overstates what blocks can take on this network (>= 1;
        None: out of time). The single-pixel boxes' bounds are looser on some networks than on
        others (max-pooling: a pixel's box costs 0.2 margins where 8-pixel blocks still prove),
        so a few random blocks of rising predicted load are bounded first: the scale is the
        largest load at which most of them were proven, over ``COVER_SHARE``."""
        prob = self.prob
        rng = np.random.default_rng(0)
        per = load.max(axis=1)
        scale = 1.0
        for level in knobs.COVER_PROBE_LEVELS:
            target = level * knobs.COVER_SHARE
            jobs: list[Job] = []
            for _ in range(knobs.COVER_PROBE_BLOCKS):
                perm = rng.permutation(prob.P)
                k = int(np.searchsorted(np.cumsum(per[perm]), target)) + 1
                if k <= self.t or k > prob.P:
                    break
                pos = np.sort(np.nonzero(np.isin(order, perm[:k]))[0])
                jobs.append(tuple((int(i), int(i) + 1) for i in pos))  # a task of single pixels: its block
            if len(jobs) < knobs.COVER_PROBE_BLOCKS or self.timer.out():  # type: ignore[attr-defined]
                return scale if jobs or not self.timer.out() else None  # type: ignore[attr-defined]
            if self._proven(jobs, order).mean() < knobs.COVER_PROBE_PROVEN:
                break
            scale = level
        return scale

    def _proven(self, jobs: list[Job], order: np.ndarray) -> np.ndarray:
        """Bound the blocks of ``jobs`` (a probe); which are proven."""
        lb, _ = box_bounds(self.prob, self._block_boxes(jobs, order), self.ref, budget=self.t)
        self.n_blocks += len(jobs)
        return lb.min(axis=1) > 0

    def _plane(self, load: np.ndarray, order: np.ndarray) -> list[Line]:
        """The plane's lines (t = 2), of the least order whose lines are mostly proven. Where
        pixels are too heavy to group (each alone), the least plane's lines hold sqrt(P) pixels
        whatever their load, and on the max-pool CNNs most fail and are split in three. So a few
        random lines are bounded first (``COVER_PROBE_BLOCKS``); while fewer than
        ``COVER_PROBE_PROVEN`` of them are proven, the order grows by a quarter (smaller lines,
        more of them), up to ``PLANE_SPREAD`` points per pixel."""
        rng = np.random.default_rng(2)
        q = 2
        while True:
            q, parts = plane_order(load, knobs.COVER_SHARE, knobs.COVER_MAX_GROUP, q)
            lines = plane_lines(q, parts)
            crossing = [line for line in lines if not line.owns and len(line.parts) > 2]
            if q * q >= PLANE_SPREAD * load.shape[0] or not crossing or self.timer.out():  # type: ignore[attr-defined]
                return lines
            pick = rng.choice(len(crossing), min(len(crossing), knobs.COVER_PROBE_BLOCKS), replace=False)
            if self._proven([crossing[i] for i in pick], order).mean() >= knobs.COVER_PROBE_PROVEN:
                return lines
            q = max(q + 1, int(q * 1.25))

    def _hopeless_level(self, top: list[Job], pred: list[float], order: np.ndarray) -> tuple[float, dict[int, bool]]:
        """The predicted load above which a task is split without being bounded, on this input,
        and the tasks of ``top`` bounded to find it (index: proven). It starts at
        ``COVER_HOPELESS``, but the prediction overstates some inputs' blocks (the max-pool PGD
        CNN's held-out image 1: blocks predicted hopeless and bounded anyway were all proven, and
        splitting them cost twice the time), so a few top tasks just above the level are bounded
        first; while most of them are proven, the level doubles (``COVER_HOPELESS_DOUBLINGS``)."""
        rng = np.random.default_rng(1)
        level = knobs.COVER_HOPELESS
        probed: dict[int, bool] = {}
        p = np.asarray(pred)
        for _ in range(knobs.COVER_HOPELESS_DOUBLINGS):
            if not (p > level).any() or self.timer.out():  # type: ignore[attr-defined]
                break
            band = np.nonzero((p > level) & (p <= 2 * level))[0]
            if band.size == 0:  # raising the level across no task changes nothing
                level *= 2
                continue
            pick = rng.choice(band, min(band.size, knobs.COVER_PROBE_BLOCKS), replace=False)
            ok = self._proven([top[i] for i in pick], order)
            probed.update({int(i): bool(v) for i, v in zip(pick, ok)})
            if ok.mean() < knobs.COVER_PROBE_PROVEN:
                break
            level *= 2
        return level, probed

    def _run_cover(self) -> str | None:
        """Cover every t-subset; returns 'refuted', 'timeout' or None (all tasks done; boxes given
        up are counted on the search as for t = 1)."""
        prob = self.prob
        load = self._load()
        if load is None:
            return "timeout"
        order = np.argsort(load.max(axis=1), kind="stable")
        scale = self._calibrate(load, order)
        if scale is None:
            return "timeout"
        self.cover_scale = scale
        load = load / scale
        cum = np.concatenate([np.zeros((1, load.shape[1])), np.cumsum(load[order], axis=0)])

        def predicted(job: Job) -> float:
            return float(sum(cum[b] - cum[a] for (a, b) in members(job)).max())

        if self.t == 2:
            top: list[Job] = self._plane(load[order], order)
        else:
            top = list(initial_tasks(groups(load[order], knobs.COVER_SHARE / self.t, knobs.COVER_MAX_GROUP), self.t))
        self.n_tasks = len(top)
        hopeless, probed = self._hopeless_level(top, [predicted(job) for job in top], order)
        self.cover_hopeless = hopeless
        heap: list[tuple[int, int, Job]] = []  # the largest blocks first
        small: list[Job] = []  # t pixels: ordinary boxes, bisected and attacked
        counter = itertools.count()

        def push(jobs: list[Job]) -> None:
            stack = list(jobs)
            while stack:
                job = stack.pop()
                size = block_size(job)
                if size <= self.t:
                    small.append(job)
                elif predicted(job) > hopeless:
                    stack.extend(kids(job))  # a block this loaded is not worth bounding: its kids are
                    self.n_presplit += 1
                else:
                    heapq.heappush(heap, (-size, next(counter), job))

        # the probes' tasks are done when proven, else their kids go on (as a failed block's do)
        push([job for i, job in enumerate(top) if i not in probed])
        push([k for i, ok in probed.items() if not ok for k in kids(top[i])])
        leaves: list[Boxes] = []
        # batches of blocks in flight, oldest first: each is bounded in a thread of its own while
        # the main thread takes the results in order, so the cover's course does not depend on
        # which thread finishes first
        flying: deque[tuple[Future, list[Job], Boxes, float]] = deque()  # type: ignore[type-arg]
        with self._threads() as pool, self._one_blas_thread():  # type: ignore[attr-defined]
            while heap or small or leaves or flying:
                if self.timer.out():  # type: ignore[attr-defined]
                    return "timeout"
                if small:
                    leaves.append(self._block_boxes(small, order))
                    small = []
                if leaves and not flying:  # (boxes may switch the problem's arithmetic: nothing in flight)
                    res = self._drain_boxes(leaves)  # type: ignore[attr-defined]
                    if res is not None:
                        return res
                    continue
                while heap and not leaves and len(flying) < self.n_threads:  # type: ignore[attr-defined]
                    # one size class per batch (padding costs as much as a scalar)
                    size = -heap[0][0]
                    n = self._box_chunk(size * int(prob.pixel_scalars.shape[1]), self.sec_per_block)  # type: ignore[attr-defined]
                    batch: list[Job] = []
                    while heap and len(batch) < n and -heap[0][0] * 2 > size:
                        batch.append(heapq.heappop(heap)[2])
                    boxes = self._block_boxes(batch, order)
                    flying.append((_submit(pool, box_bounds, prob, boxes, self.ref, budget=self.t), batch, boxes,
                                   time.perf_counter()))
                future, batch, boxes, started = flying.popleft()
                lb, hint = future.result()
                self.n_blocks += len(batch)
                self.n_block_scalars += int((boxes.S >= 0).sum())
                self.sec_per_block = (time.perf_counter() - started) / len(batch)
                fail = np.nonzero(lb.min(axis=1) <= 0)[0]
                if fail.size == 0:
                    continue
                if self.check(self._worst_points(boxes.take(fail), lb[fail], hint[fail])):  # type: ignore[attr-defined]
                    return "refuted"
                push([k for i in fail for k in kids(batch[i])])
        return None


def _submit(pool: ThreadPoolExecutor | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:  # type: ignore[type-arg]
    """``fn`` in the pool, or here and now without one."""
    if pool is not None:
        return pool.submit(fn, *args, **kwargs)
    done: Future = Future()  # type: ignore[type-arg]
    done.set_result(fn(*args, **kwargs))
    return done
