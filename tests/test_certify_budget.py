"""Blocks bounded as L0 balls over their own pixels (``box_bounds(..., budget=t)``, ``Budget``).

- The top-k rule (``Budget.least``) against brute force over every set of at most k pixels.
- Bounds of blocks with a budget stay below an exact MILP minimum over the same set (at most
  ``budget`` of the block's pixels changed, the others at x0), on CNNs with max-pooling, a final
  Softmax, three channels (NCHW and NHWC), normalisation and average pooling, in float32 and
  float64; and they are tighter, taken together, than the bounds of the box that frees every
  pixel at once.
- With structured convolutions (cones, and rows anchored at the cut's clean values, each
  relaxation gap charged to the pixels that reach it: ``boxes._anchor``), the same MILP bound holds,
  and the anchoring runs.
- A box that frees part of a pixel, or a pixel twice, is refused: the rule would miscount it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from l0tre_core.certify import Network, boxes, network
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.problem import Budget
from l0tre_core.certify.search import problem_for

from test_certify_soundness import _input_set
from test_certify_support import build_cnn, milp_min_margin

TOL = 1e-6


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_least_is_the_least_sum_over_at_most_k_pixels(width: int, pixels: int) -> None:
    rng = np.random.default_rng(10 * width + pixels)
    n = 6
    terms = -rng.exponential(size=(4, n * width, 5))  # each scalar's least term over a range holding 0
    terms[rng.uniform(size=terms.shape) < 0.2] = 0.0
    got = Budget(pixels, width).least(terms)
    per_pixel = terms.reshape(4, n, width, 5).sum(axis=2)
    want = np.zeros((4, 5))  # nothing changed
    for k in range(1, pixels + 1):
        for pick in itertools.combinations(range(n), k):
            want = np.minimum(want, per_pixel[:, list(pick)].sum(axis=1))
    np.testing.assert_allclose(got, want, atol=1e-12)
    # a positive term (a range without x0) never raises the bound above the true least sum
    terms[:, :width] = rng.uniform(0.5, 1.0, size=(4, width, 5))
    per_pixel = terms.reshape(4, n, width, 5).sum(axis=2)
    truth = np.zeros((4, 5))
    for k in range(1, pixels + 1):
        for pick in itertools.combinations(range(n), k):
            truth = np.minimum(truth, per_pixel[:, list(pick)].sum(axis=1))
    assert (Budget(pixels, width).least(terms) <= truth + 1e-12).all()


_CASES = [
    ("max pool, Softmax", lambda s: build_cnn(s, hw=(3, 3), conv=(3, 2, 1, 0), pool="max", softmax=True, dense=6)),
    ("two convolutions, max pool", lambda s: build_cnn(s, hw=(3, 3), conv=(2, 2, 1, 0), pool="max", second_conv=True, dense=4)),
    ("3 channels, normalised, average pool", lambda s: build_cnn(s, hw=(3, 3), channels=3, conv=(4, 2, 1, 0), pool="avg",
                                                                  normalise=True, dense=6)),
    ("3 channels, NHWC", lambda s: build_cnn(s, hw=(3, 3), channels=3, layout="nhwc", conv=(3, 2, 1, 0), dense=6)),
]


def _block(prob: object, pix: np.ndarray) -> Boxes:
    sc = prob.pixel_scalars[pix].reshape(-1)  # type: ignore[attr-defined]
    x0, lo, hi = prob.x0[sc], prob.lo[sc], prob.hi[sc]  # type: ignore[attr-defined]
    return Boxes(sc[None], (lo - x0)[None], (hi - x0)[None], np.zeros(1, np.int64))


@pytest.mark.parametrize("structured", [False, True], ids=["dense", "cones"])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("name,make", _CASES, ids=[c[0] for c in _CASES])
def test_budget_blocks_stay_below_the_milp_minimum(name: str, make: object, exact: bool, structured: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block's margin bounds with budget b are at most the exact minimum over the block's
    points that change at most b of its pixels (float32 terms prepared for t = 2, or none); and
    over all blocks the budget's least margins are above the whole box's (not on every block:
    the relaxations' slopes follow the intermediate bounds, and a tighter interval can choose a
    slope that ends lower). ``cones``: convolutions kept structured, so that blocks run over
    their cones and their rows are anchored at the cut."""
    anchored = []
    real_anchor = boxes._anchor
    monkeypatch.setattr(boxes, "_anchor", lambda *a: anchored.append(real_anchor(*a)) or anchored[-1])
    if structured:
        monkeypatch.setattr(network, "DENSE_CONV_MAX", -1)
    gained = 0.0
    cut = False
    for seed in range(2):
        case = make(300 + seed)  # type: ignore[operator]
        net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
        cut |= net.cut is not None
        rng = np.random.default_rng(seed)
        x0 = rng.uniform(0, 1, case.d)
        if seed:  # near a decision boundary: the least clean margin of 32 draws
            xs = rng.uniform(0, 1, (32, case.d))
            z = np.sort(net.forward(xs), axis=1)
            x0 = xs[int(np.argmin(z[:, -1] - z[:, -2]))]
        ref = int(np.argmax(net.forward(x0[None])[0]))
        prob = problem_for(net, _input_set(case, x0))
        if exact:
            prob.exact_arithmetic = True
        else:
            prob.prepare_float32(2)
        P = case.n_pixels
        others = [k for k in range(net.n_outputs) if k != ref]
        for size, budget in ((4, 2), (P, 2), (5, 1), (P // 2 + 1, 2)):
            pix = rng.choice(P, size, replace=False)
            box = _block(prob, pix)
            lb, _ = box_bounds(prob, box, ref, budget=budget)
            whole, _ = box_bounds(prob, box, ref, inside_ball=False)
            assert np.isfinite(lb).all()
            gained += float(lb.min() - whole.min())  # (a margin proven early is not tightened further)
            excluded = np.ones(P, bool)
            excluded[pix] = False
            for col, k in enumerate(others):
                truth, _ = milp_min_margin(net, case, x0, ref, k, budget, excluded=excluded)
                assert lb[0, col] <= truth + TOL, (name, seed, pix, budget, k, lb[0, col], truth)
    assert gained > 0.0  # the budget bites: it is not the whole box's bound
    assert any(rows is not None for rows in anchored) == (structured and cut)  # (a dense head after a cut)


def test_a_budget_needs_whole_pixels_each_once() -> None:
    case = build_cnn(7, hw=(3, 3), channels=3, conv=(3, 2, 1, 0), dense=6)
    net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
    x0 = np.random.default_rng(0).uniform(0, 1, case.d)
    prob = problem_for(net, _input_set(case, x0))
    ref = int(np.argmax(net.forward(x0[None])[0]))
    good = _block(prob, np.array([0, 4, 8]))
    box_bounds(prob, good, ref, budget=2)
    twice = _block(prob, np.array([0, 4, 0]))
    with pytest.raises(ValueError, match="once"):
        box_bounds(prob, twice, ref, budget=2)
    mixed = [0, 1, 2, 4, 3, 5, 6, 7, 8]  # two pixels' scalars interleaved
    part = Boxes(good.S[:, mixed], good.dlo[:, mixed], good.dhi[:, mixed], good.depth)
    with pytest.raises(ValueError, match="whole pixels"):
        box_bounds(prob, part, ref, budget=2)
    box_bounds(prob, part, ref)  # a box without a budget may free any scalars
