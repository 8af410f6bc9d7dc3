"""Float32 rounding bounded per box (``certify/boxes.py``, ``_box_rounding``): the Higham model
of ``certify/float32.py`` evaluated on each box's own bounds instead of the L0 ball's.

Each box's rounding terms never exceed the ball's (both bound the real error; the smaller is
kept), are the same over the cone as over the whole input, and cost the box's margin bound no
more than the ball's terms did (strictly less on the deep PGD ResNet, where the light ball
bounds inflate them). That they bound onnxruntime's float32 network is checked by the
soundness harness (``tests/test_soundness_harness.py``, ``benchmarks/soundness.py --cones``).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_certify_cones import _boxes, _problem

from l0tre_core.certify import boxes as bx
from l0tre_core.certify.search import problem_for


def _resnet_boxes() -> tuple[object, object, int]:
    net, inputs, ref = _problem("fmnist_resnet_pgd", 1)
    prob = problem_for(net, inputs)
    prob.light = True  # as t = 1 certifies this network
    prob.prepare_float32(1)
    rng = np.random.default_rng(3)
    pixels = [[int(p)] for p in rng.choice(prob.P, 16, replace=False)] + [[0], [prob.P - 1]]
    return prob, _boxes(prob, pixels, rng), ref


def test_box_rounding_is_below_the_balls_and_the_same_over_the_cone(monkeypatch: pytest.MonkeyPatch) -> None:
    prob, boxes, ref = _resnet_boxes()
    clean = bx._clean(prob)
    *_, eps_cone = bx._forward(prob, boxes.S, boxes.dlo, boxes.dhi, clean)
    *_, eps_whole = bx._forward(prob, boxes.S, boxes.dlo, boxes.dhi, None)
    linear = [j for j, nd in enumerate(prob.net.nodes) if nd.kind == "linear" and nd.gsum]
    assert set(eps_cone) >= set(linear)
    smaller = []
    for j in linear:
        ball = prob.rounding(j)
        np.testing.assert_allclose(eps_cone[j], eps_whole[j], rtol=1e-9, atol=0)
        assert (eps_cone[j] <= ball[None] * (1 + 1e-12)).all()
        assert (eps_cone[j] > 0).all()  # the float32 terms are still there
        smaller.append(float(eps_cone[j].mean() / ball.mean()))
    # the deep layers' terms shrink: the ball's come from interval bounds that grow with depth
    assert min(smaller[len(smaller) // 2 :]) < 0.5, smaller


def test_box_rounding_costs_the_margin_less(monkeypatch: pytest.MonkeyPatch) -> None:
    prob, boxes, ref = _resnet_boxes()
    lb_box, _ = bx.box_bounds(prob, boxes, ref)
    prob.exact_arithmetic = True
    lb64, _ = bx.box_bounds(prob, boxes, ref)
    prob.exact_arithmetic = False

    def ball_rounding(prob, j, *args):  # type: ignore[no-untyped-def]
        eps = prob.rounding(j)
        return None if eps is None else np.broadcast_to(eps, (args[1].shape[0], eps.size))

    monkeypatch.setattr(bx, "_box_rounding", ball_rounding)
    lb_ball, _ = bx.box_bounds(prob, boxes, ref)
    cost_box = lb64 - lb_box
    cost_ball = lb64 - lb_ball
    assert (cost_box <= cost_ball + 1e-12).all()
    assert cost_box.mean() < 0.5 * cost_ball.mean(), (cost_box.mean(), cost_ball.mean())
