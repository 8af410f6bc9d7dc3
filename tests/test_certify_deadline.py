"""Time limits inside a certification (issue #10): a pass of the ball's bounds stops at the
deadline (``Problem.deadline``, ``OutOfTime``), and box batches are sized to end by it
(``_Search._drain_boxes``), so a certification returns ``unknown`` (timeout) soon after its limit
and claims nothing. No timed assertion: each test checks that the work stopped before it was done.
"""

from __future__ import annotations

import numpy as np

from l0tre_core.certify import certify
from l0tre_core.certify.search import _Timer, problem_for
from l0tre_core.certify.split import FIRST_BATCH, _Search
from test_certify_cones import _problem


def test_a_spent_limit_stops_inside_the_ball_bounds() -> None:
    net, inputs, ref = _problem("fmnist_resnet_pgd", 0)
    v = certify(net, inputs, ref, 1, time_limit=0.0)
    assert v.status == "unknown" and v.witness is None
    assert "timeout in the ball's bounds" in v.detail


def test_box_batches_stop_at_the_deadline() -> None:
    net, inputs, ref = _problem("fmnist_resnet_pgd", 0)
    prob = problem_for(net, inputs)
    prob.light = True
    prob.prepare_float32(1)  # no deadline: the ball's bounds run to the end
    search = _Search(prob, ref, 1, _Timer(0.5))
    prob.deadline = search.timer.deadline
    v = search.run(np.zeros((1, net.n_outputs - 1)), None)
    assert v.status in ("unknown", "refuted")
    if v.status == "unknown":
        assert "timeout" in v.detail
        # a whole batch would be this many boxes; the deadline cut the work well before all
        # P single-pixel boxes (each needs several bisections on this network)
        assert FIRST_BATCH <= search.n_boxes < prob.P, search.n_boxes
    else:  # a witness found before the deadline must be real
        from l0tre_core.certify.search import margins

        assert margins(net, ref, v.witness[None])[0].min() < 0
