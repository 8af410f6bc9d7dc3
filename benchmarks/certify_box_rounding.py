"""What float32 rounding terms cost the box bounds on a zoo model: the ball's terms vs each box's own.

    nice -n 5 python benchmarks/certify_box_rounding.py [MODEL] [N_INPUTS] [N_PIXELS] [PIECES]

For the first N_INPUTS test images (the zoo's ResNet inputs, ``tests/test_certify_cones._problem``)
and N_PIXELS random pixels each, every pixel's range is cut into PIECES equal boxes (as bisection
would reach them) and bounded three ways with the light t = 1 ball of the search: in exact float64
arithmetic, with the ball's float32 rounding terms (before), with each box's own (now, the
default). Prints the boxes float64 proves, how many of them each float32 bound proves, and the
mean margin the float32 terms cost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_certify_cones import _problem  # noqa: E402

from l0tre_core.certify import boxes as bx  # noqa: E402
from l0tre_core.certify.boxes import Boxes  # noqa: E402
from l0tre_core.certify.search import problem_for  # noqa: E402


def _ball_rounding(prob, j, *args):  # type: ignore[no-untyped-def]
    eps = prob.rounding(j)
    return None if eps is None else np.broadcast_to(eps, (args[1].shape[0], eps.size))


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "fmnist_resnet_pgd"
    n_inputs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    n_pixels = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    pieces = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    own = bx._box_rounding
    tot = {"boxes": 0, "f64": 0, "ball": 0, "own": 0}
    cost_ball, cost_own = [], []
    for i in range(n_inputs):
        net, inputs, ref = _problem(model, i)
        prob = problem_for(net, inputs)
        prob.light = True
        prob.prepare_float32(1)
        rng = np.random.default_rng(i)
        parts = []
        for p in rng.choice(prob.P, n_pixels, replace=False):
            sc = prob.pixel_scalars[p]
            lo, hi, x0 = prob.lo[sc], prob.hi[sc], prob.x0[sc]
            for k in range(pieces):  # a diagonal slice of the pixel's box
                a = lo + (hi - lo) * k / pieces
                b = lo + (hi - lo) * (k + 1) / pieces
                parts.append(Boxes(sc[None], (a - x0)[None], (b - x0)[None], np.zeros(1, np.int64)))
        boxes = Boxes.concat(parts)
        prob.exact_arithmetic = True
        lb64 = np.concatenate([bx.box_bounds(prob, boxes.take(np.arange(s, min(s + 64, len(boxes)))), ref)[0]
                               for s in range(0, len(boxes), 64)])
        prob.exact_arithmetic = False
        res = {}
        for name, fn in (("ball", _ball_rounding), ("own", own)):
            bx._box_rounding = fn
            res[name] = np.concatenate([bx.box_bounds(prob, boxes.take(np.arange(s, min(s + 64, len(boxes)))), ref)[0]
                                        for s in range(0, len(boxes), 64)])
        bx._box_rounding = own
        f64 = lb64.min(axis=1) > 0
        tot["boxes"] += len(boxes)
        tot["f64"] += int(f64.sum())
        for name in ("ball", "own"):
            tot[name] += int((res[name].min(axis=1) > 0).sum())
        cost_ball.append(float((lb64 - res["ball"]).mean()))
        cost_own.append(float((lb64 - res["own"]).mean()))
        print(f"input {i}: {len(boxes)} boxes, float64 proves {int(f64.sum())}, float32 with the ball's terms "
              f"{int((res['ball'].min(axis=1) > 0).sum())}, with each box's own {int((res['own'].min(axis=1) > 0).sum())}; "
              f"mean cost {cost_ball[-1]:.3g} -> {cost_own[-1]:.3g}", flush=True)
    print(f"total: {tot}; mean cost of the float32 terms {np.mean(cost_ball):.3g} (ball) -> {np.mean(cost_own):.3g} (own)")


if __name__ == "__main__":
    main()
