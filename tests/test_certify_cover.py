"""Covering blocks for t >= 2 (``certify/cover.py``).

- Completeness, checked against an independent statement of what each job must cover: the top
  jobs cover every t-subset of pixels, every job's children cover everything it did, and a job only
  claims subsets inside its own block. With these three, a search that proves or splits every job
  has covered every t-subset (whatever the loads, shares and splits).
- Boxes that free more pixels than the ball the float32 terms were prepared for, bounded with
  their own terms (``inside_ball=False``: a block whose pixels differ in their number of scalars,
  where the budget cannot be counted), stay below an exact MILP minimum over the box. Blocks with
  a budget (what the cover bounds) are checked in ``test_certify_budget.py``.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np
import pytest

from l0tre_core.certify import Network
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.cover import Cross, Line, block_size, groups, initial_tasks, kids, members, plane, split
from l0tre_core.certify.search import problem_for

from test_certify_support import build_cnn, milp_min_margin

TOL = 1e-6


def _problem(case: object, x0: np.ndarray, t: int) -> tuple[Network, int, object]:
    """The case's network, x0's class, and the problem with float32 terms prepared for ``t``."""
    from test_certify_soundness import _input_set

    net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)  # type: ignore[attr-defined]
    prob = problem_for(net, _input_set(case, x0))
    prob.prepare_float32(t)
    return net, int(np.argmax(net.forward(x0[None])[0])), prob


def _claims(job: object) -> set[frozenset[int]]:
    """The t-subsets (of positions in the sorted order) a job is responsible for, written from the
    definitions, not from the code under test."""

    def span(g: tuple[int, int]) -> range:
        return range(g[0], g[1])

    out: set[frozenset[int]] = set()
    if isinstance(job, Line):
        for g, h in itertools.combinations(job.parts, 2):
            out |= {frozenset((p, q)) for p in span(g) for q in span(h)}
        for g in job.owns:
            out |= {frozenset(c) for c in itertools.combinations(span(g), 2)}
    elif isinstance(job, Cross):
        out |= {frozenset((p, q)) for g in job.a for h in job.b for p in span(g) for q in span(h) if p != q}
    else:
        for pick in itertools.product(*[span(g) for g in job]):
            if len(set(pick)) == len(pick):
                out.add(frozenset(pick))
    return out


def _check_tree(job: object, t: int, depth: int = 0) -> None:
    mine = _claims(job)
    inside = set().union(*[set(range(a, b)) for (a, b) in members(job)])  # type: ignore[arg-type]
    assert all(s <= inside for s in mine)
    assert block_size(job) == len(inside)  # type: ignore[arg-type]
    if block_size(job) <= t:  # type: ignore[arg-type]
        return
    children = kids(job)  # type: ignore[arg-type]
    assert depth < 64
    got = set().union(*[_claims(k) for k in children]) if children else set()
    assert mine <= got, (job, mine - got)
    for k in children:
        assert block_size(k) < block_size(job)  # type: ignore[arg-type]  # progress: the search ends
        _check_tree(k, t, depth + 1)


@pytest.mark.parametrize("seed", range(12))
def test_plane_lines_and_their_pieces_cover_every_pair(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    load = rng.exponential(0.1, (n, 3)) * (rng.uniform(size=(n, 1)) < 0.8)
    load = load[np.argsort(load.max(axis=1))]
    least = int(rng.choice([2, 2, n, 2 * n]))  # a larger order than the groups need: sparse lines
    lines = plane(load, float(rng.uniform(0.05, 2.0)), int(rng.integers(1, 9)), least)
    every = {frozenset(c) for c in itertools.combinations(range(n), 2)}
    assert set().union(*[_claims(line) for line in lines]) == every
    for line in lines:
        _check_tree(line, 2)


@pytest.mark.parametrize("t", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_group_tasks_and_their_splits_cover_every_subset(t: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(t, 13))
    load = rng.exponential(0.1, (n, 2))
    parts = groups(load, float(rng.uniform(0.05, 1.0)), int(rng.integers(1, 6)))
    assert [a for a, _ in parts] == [0] + [b for _, b in parts[:-1]] and parts[-1][1] == n
    tasks = initial_tasks(parts, t)
    every = {frozenset(c) for c in itertools.combinations(range(n), t)}
    assert set().union(*[_claims(task) for task in tasks]) == every
    for task in tasks:
        _check_tree(task, t)
        for kid in split(task) if block_size(task) > t else []:
            assert sorted(kid) == list(kid)


def test_groups_respect_the_share_and_the_size() -> None:
    load = np.array([[0.1], [0.1], [0.1], [0.5], [0.05], [0.05], [0.05], [0.05], [0.05]])
    parts = groups(load, 0.25, 3)
    assert parts == [(0, 2), (2, 3), (3, 4), (4, 7), (7, 9)]


@pytest.mark.parametrize("seed", range(3))
def test_block_bounds_outside_the_ball_stay_below_the_milp_minimum(seed: int) -> None:
    """Blocks of 3 to all pixels, on a CNN with max-pooling and a final Softmax, the float32 terms
    prepared for t = 2: each block's margin bounds are at most the exact minimum over the block."""
    case = build_cnn(60 + seed, hw=(3, 3), conv=(3, 2, 1, 0), pool="max", softmax=True, dense=6)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 1, case.d)
    net, ref, prob = _problem(case, x0, 2)
    P = case.n_pixels
    blocks = [rng.choice(P, k, replace=False) for k in (3, P // 2, P)]
    for pix in blocks:
        sc = np.nonzero(np.isin(case.pixel, pix))[0]
        box = Boxes(sc[None], (prob.lo[sc] - prob.x0[sc])[None], (prob.hi[sc] - prob.x0[sc])[None], np.zeros(1, np.int64))
        lb, _ = box_bounds(prob, box, ref, inside_ball=False)
        assert np.isfinite(lb).all()
        forced = np.zeros(P, bool)
        forced[pix] = True
        others = [k for k in range(net.n_outputs) if k != ref]
        for col, k in enumerate(others):
            exact, _ = milp_min_margin(net, case, x0, ref, k, 0, forced=forced)
            assert lb[0, col] <= exact + TOL, (pix, k, lb[0, col], exact)


def test_t1_keeps_each_pixel_boxs_bounds_for_the_next_level() -> None:
    """What certify at t = 1 leaves for t = 2's grouping equals the pixel boxes' bounds."""
    from l0tre_core.certify import cover
    from l0tre_core.certify.search import _Search, _Timer

    case = build_cnn(70, hw=(3, 3), conv=(3, 2, 1, 0), dense=6)
    x0 = np.random.default_rng(0).uniform(0, 1, case.d)
    net, ref, prob = _problem(case, x0, 1)
    cover._T1_BOUNDS.clear()
    search = _Search(prob, ref, 1, _Timer(30.0))
    assert search._run_t1().status == "proven"  # (so every pixel box was bounded)
    assert list(cover._T1_BOUNDS) == [search._t1_key()]
    kept = cover._T1_BOUNDS[search._t1_key()]
    S = prob.pixel_scalars
    direct, _ = box_bounds(prob, Boxes(S, prob.lo[S] - prob.x0[S], prob.hi[S] - prob.x0[S], np.zeros(len(S), np.int64)), ref)
    np.testing.assert_allclose(kept, direct, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 3])  # seeds whose first probe proves some tasks and fails others
def test_the_cover_with_hopeless_probes_leaves_no_pair_out(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the blocks' bounds say, every pair of pixels ends in a proven block or in a pair
    box handed to the box search. Every task starts out hopeless, so the probes that raise the
    level (``_Cover._hopeless_level``) prove some tasks and fail others (bounds faked at random):
    a proven probe's task is done, a failed one's kids go on."""
    from l0tre_core.certify import cover, search
    from l0tre_core.certify.search import _Search, _Timer

    case = build_cnn(80 + seed, hw=(4, 4), conv=(3, 2, 1, 0), dense=6)
    x0 = np.random.default_rng(seed).uniform(0, 1, case.d)
    net, ref, prob = _problem(case, x0, 2)
    monkeypatch.setattr(search, "COVER_HOPELESS", 0.01)
    monkeypatch.setattr(search, "COVER_HOPELESS_DOUBLINGS", 10)
    monkeypatch.setattr(cover, "PLANE_SPREAD", 0)  # the least plane, unprobed (probed below)
    rng = np.random.default_rng(seed)
    covered: set[tuple[int, int]] = set()
    probed: list[dict[int, bool]] = []

    def pairs(pix: np.ndarray) -> set[tuple[int, int]]:
        return set(itertools.combinations(sorted(set(pix.tolist())), 2))

    def fake_bounds(p: object, boxes: Boxes, r: int, inside_ball: bool = True,
                    budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        # a proven block proves the t-subsets of its pixels: it is bounded over all of them (a
        # smaller budget would prove fewer pixels changed than the level asks)
        assert budget is None or budget >= 2
        proven = rng.uniform(size=len(boxes)) < 0.5
        for i in np.nonzero(proven)[0]:
            covered.update(pairs(prob.pixel[boxes.S[i][boxes.S[i] >= 0]]))
        lb = np.where(proven, 1.0, -1.0)[:, None] * np.ones((len(boxes), net.n_outputs - 1))
        return lb, np.zeros((len(boxes), net.n_outputs - 1, boxes.S.shape[1]))

    real_blocks, real_level = cover._Cover._block_boxes, cover._Cover._hopeless_level

    def small_jobs(self: object, tasks: list, order: np.ndarray) -> Boxes:
        for task in tasks:
            if block_size(task) <= 2:  # a pair box: the box search takes it from here
                covered.update(pairs(np.concatenate([order[a:b] for (a, b) in members(task)])))
        return real_blocks(self, tasks, order)  # type: ignore[arg-type]

    def level(self: object, *args: object) -> tuple[float, dict[int, bool]]:
        out = real_level(self, *args)  # type: ignore[arg-type]
        probed.append(out[1])
        return out

    s = _Search(prob, ref, 2, _Timer(60.0))
    monkeypatch.setattr(cover, "box_bounds", fake_bounds)
    monkeypatch.setattr(cover._Cover, "_block_boxes", small_jobs)
    monkeypatch.setattr(cover._Cover, "_hopeless_level", level)
    monkeypatch.setattr(s, "_calibrate", lambda load, order: 1.0)  # (its random blocks cover nothing)
    monkeypatch.setattr(s, "_drain_boxes", lambda queue, all_=True: queue.clear())
    monkeypatch.setattr(s, "check", lambda points: False)
    assert s._run_cover() is None
    assert probed and any(v for v in probed[0].values()) and not all(probed[0].values())
    assert covered == set(itertools.combinations(range(case.n_pixels), 2))


@pytest.mark.parametrize("proven_up_to", [4, 0, 99])
def test_the_plane_grows_while_its_lines_fail(proven_up_to: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pixels too heavy to group: the least plane's lines hold one pixel per column. While its
    probed lines fail (faked: a block is proven iff it frees at most ``proven_up_to`` pixels), the
    order grows (``_Cover._plane``), up to ``PLANE_SPREAD`` points per pixel; the lines of
    whatever order it stops at still cover every pair of pixels."""
    from l0tre_core.certify import cover
    from l0tre_core.certify.search import _Search, _Timer

    case = build_cnn(90, hw=(6, 6), conv=(3, 2, 1, 0), dense=6)
    x0 = np.random.default_rng(0).uniform(0, 1, case.d)
    net, ref, prob = _problem(case, x0, 2)

    def fake_bounds(p: object, boxes: Boxes, r: int, inside_ball: bool = True,
                    budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        assert budget == 2
        ok = (boxes.S >= 0).sum(axis=1) <= proven_up_to
        return np.where(ok, 1.0, -1.0)[:, None] * np.ones((len(boxes), net.n_outputs - 1)), np.zeros(0)

    monkeypatch.setattr(cover, "box_bounds", fake_bounds)
    s = _Search(prob, ref, 2, _Timer(60.0))
    P = case.n_pixels
    lines = s._plane(np.full((P, net.n_outputs - 1), 10.0), np.arange(P))
    crossing = [block_size(line) for line in lines if not line.owns]
    if proven_up_to >= P:
        assert max(crossing) == 6  # the least plane (order 7: one pixel in each of 6 columns)
    elif proven_up_to == 0:
        assert len(lines) >= 13 * 13  # grown to the cap: 13^2 >= 4 points per pixel
    else:
        assert max(crossing) <= proven_up_to
    every = {frozenset(c) for c in itertools.combinations(range(P), 2)}
    assert set().union(*[_claims(line) for line in lines]) == every


class _InFlight:
    """A spy on ``box_bounds``: the free scalars of every box it was given, and the most calls
    running at once."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.lock = threading.Lock()
        self.busy = self.most = 0
        self.boxes: list[bytes] = []

    def __call__(self, prob: object, boxes: Boxes, ref: int, **kw: object) -> object:
        with self.lock:
            self.boxes.extend(row[row >= 0].tobytes() for row in boxes.S)
            self.busy += 1
            self.most = max(self.most, self.busy)
        try:
            return self.real(prob, boxes, ref, **kw)
        finally:
            with self.lock:
                self.busy -= 1


def test_threads_change_the_time_not_the_cover(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of blocks bounded in two threads at once (``BOUND_THREADS``) give what one thread
    gives: the same verdict and the same blocks (a batch may be cut before the one ahead of it has
    pushed its kids, so batches differ), with two batches really in flight at once."""
    from l0tre_core.certify import certify, cover, search, split
    from test_certify_cones import _problem as zoo_problem

    net, inputs, ref = zoo_problem("mnist_convsmall", 0)
    runs = {}
    for threads in (1, 2):
        spy = _InFlight(cover.box_bounds)
        monkeypatch.setattr(search, "BOUND_THREADS", threads)
        monkeypatch.setattr(cover, "box_bounds", spy)
        certify(net, inputs, ref, 1)
        v = certify(net, inputs, ref, 2)
        monkeypatch.undo()
        runs[threads] = (v.status, v.detail, sorted(spy.boxes), spy.most)
    assert runs[1][0] == runs[2][0] == "proven"
    assert runs[1][1:3] == runs[2][1:3]
    assert runs[1][3] == 1 and runs[2][3] == min(2, split.cores())  # (one core: one thread)


def test_threads_share_a_batch_of_pixel_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    """t = 1: a batch of pixel boxes is shared between the threads (``_Search._bounds``): the same
    verdict and pixel-box bounds as one thread, two calls in flight at once, and no more than
    ``certify(..., threads=1)`` allows."""
    from l0tre_core.certify import certify, cover, search, split
    from test_certify_cones import _problem as zoo_problem

    net, inputs, ref = zoo_problem("mnist_convsmall", 0)
    runs = {}
    for knob, threads in ((1, 0), (2, 0), (2, 1)):
        spy = _InFlight(split.box_bounds)
        monkeypatch.setattr(search, "BOUND_THREADS", knob)
        monkeypatch.setattr(split, "box_bounds", spy)
        cover._T1_BOUNDS.clear()
        v = certify(net, inputs, ref, 1, threads=threads)
        monkeypatch.undo()
        (kept,) = cover._T1_BOUNDS.values()
        runs[(knob, threads)] = (v.status, v.detail, kept, spy.most, len(spy.boxes))
    one, two, capped = runs[(1, 0)], runs[(2, 0)], runs[(2, 1)]
    assert one[0] == two[0] == capped[0] == "proven" and one[1] == two[1] == capped[1]
    assert one[4] == two[4] >= 784  # every pixel box bounded, each once
    np.testing.assert_allclose(two[2], one[2], rtol=1e-9, atol=1e-9)
    assert one[3] == 1 and two[3] == min(2, split.cores()) and capped[3] == 1
