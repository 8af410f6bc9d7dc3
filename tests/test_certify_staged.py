"""The margins' backward pass stopped at the cut before the dense head (``boxes._spec_backward``,
``Network.cut``): bounded there by the box's forward-mode rows first, the rest on to the input.

- Sound: on small CNNs with convolutions kept structured (as on real networks) and max-pooling,
  BatchNorm and Softmax heads, the margin bounds of boxes of one to three whole-range pixels stay
  below an exact MILP's minimum, for the float32 network and in float64; a spy fails the test if
  no box was decided at the cut or none went on to the input.
- Never weaker where it matters: on the zoo's CNNs, every box the full pass proves is proven, and
  a box the cut does not decide gets the full pass's bound or a higher one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from l0tre_core.certify import InputSet, Network, network
from l0tre_core.certify import boxes as bx
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.search import problem_for
from test_certify_local import _bounds_both_ways
from test_certify_soundness import _input_set
from test_certify_support import build_cnn, milp_min_margin

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"
TOL = 1e-7


def _zoo(name: str) -> Network:
    model = onnx.load(str(ZOO / f"{name}.onnx"))
    return Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))


def test_the_cut_is_the_last_node_before_the_dense_head() -> None:
    net = _zoo("mnist_convsmall")  # conv, relu, conv, relu | dense, relu, dense
    k = net.cut
    assert k is not None and net.nodes[k].kind == "relu"
    head = net.nodes[k + 1]
    assert head.kind == "linear" and all(isinstance(w, np.ndarray) for w in head.mats)
    assert all(min(nd.parents) >= k for nd in net.nodes[k + 1 :])
    assert _zoo("mnist_mlp").cut is None  # dense from the input: nothing to skip


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the boxes decided at the cut and those that went on to the input."""
    seen = {"at_cut": 0, "on": 0}
    real = bx.backward

    def spy(prob: object, rx: object, start: int, *args: object, **kw: object) -> object:
        out = real(prob, rx, start, *args, **kw)  # type: ignore[arg-type]
        if kw.get("stop") is not None:
            seen["at_cut"] += int(args[2])  # n_dom: the boxes stopped at the cut
        elif start == prob.net.cut:  # type: ignore[attr-defined]
            seen["on"] += int(args[2])
        return out

    monkeypatch.setattr(bx, "backward", spy)
    return seen


_MAX = {"pool": "max", "second_conv": True, "dense": 8, "hw": (4, 4), "conv": (3, 3, 1, 1)}
_BN_SOFTMAX = {"pool": "max", "second_conv": True, "dense": 6, "hw": (4, 4), "conv": (3, 2, 1, 0), "pool_s": 1,
               "softmax": True, "bn": True}
_AVG = {"pool": "avg", "dense": 8, "hw": (5, 5), "conv": (3, 3, 1, 1)}


@pytest.mark.parametrize("seed,options", [(89, _MAX), (86, _BN_SOFTMAX), (90, _BN_SOFTMAX), (7, _AVG)])
def test_staged_box_margins_stay_below_the_milp_minimum(seed: int, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "DENSE_CONV_MAX", 0)  # convolutions structured, as on real networks
    case = build_cnn(seed, **options)
    net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
    assert net.cut is not None
    seen = _spy(monkeypatch)
    rng = np.random.default_rng(seed)
    others = None
    for x0 in rng.uniform(0, 1, (3, case.d)):
        ref = int(np.argmax(net.forward(x0[None])[0]))
        others = [k for k in range(net.n_outputs) if k != ref]
        prob = problem_for(net, _input_set(case, x0))
        prob.prepare_float32(3)  # the boxes below (1 to 3 pixels) lie in the ball
        for _ in range(4):
            pix = rng.choice(case.n_pixels, int(rng.integers(1, 4)), replace=False)
            sc = np.nonzero(np.isin(case.pixel, pix))[0]
            forced = np.zeros(case.n_pixels, bool)
            forced[pix] = True
            exact = np.array([milp_min_margin(net, case, x0, ref, k, 0, forced=forced)[0] for k in others])
            for arith, lb in _bounds_both_ways(prob, sc, ref):
                assert (lb <= exact + TOL).all(), (pix, arith, lb, exact)
    assert seen["at_cut"] > 0 and seen["on"] > 0, seen


def _pixel_and_block_boxes(prob: object, rng: np.random.Generator) -> Boxes:
    """Whole-range boxes of one pixel, of two, and blocks of 20 to 80 (as the cover bounds them)."""
    parts = []
    for k in [1] * 16 + [2] * 16 + [20] * 16 + [40] * 16 + [80] * 16:
        sc = rng.choice(prob.P, k, replace=False)  # type: ignore[attr-defined]
        lo, hi, x0 = prob.lo[sc], prob.hi[sc], prob.x0[sc]  # type: ignore[attr-defined]
        parts.append(Boxes(sc[None], (lo - x0)[None], (hi - x0)[None], np.zeros(1, np.int64)))
    return Boxes.concat(parts)


@pytest.mark.parametrize("name", ["mnist_convsmall", "mnist_maxpool"])
def test_staged_proves_what_the_full_pass_proves(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    net = _zoo(name)
    with gzip.open(ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        img = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[8003]
    x0 = img.astype(np.float64) / 255
    inputs = InputSet(x0=x0, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)
    ref = int(np.argmax(net.forward(x0[None])[0]))
    prob = problem_for(net, inputs)
    prob.prepare_float32(2)
    boxes = _pixel_and_block_boxes(prob, np.random.default_rng(0))
    seen = _spy(monkeypatch)
    both = {}
    for staged in (False, True):
        monkeypatch.setattr(bx, "STAGED", staged)
        both[staged] = box_bounds(prob, boxes, ref, inside_ball=False)[0]
    full, cut = both[False], both[True]
    assert seen["at_cut"] > 0 and seen["on"] > 0, seen
    proven_full, proven_cut = full.min(axis=1) > 0, cut.min(axis=1) > 0
    assert (proven_cut | ~proven_full).all(), "a box the full pass proves is not proven"
    undecided = ~proven_cut
    assert undecided.any() and proven_full.any()
    # the margins the cut leaves unproven go on to the input as the full pass's do: no lower
    # there (a margin the cut proves keeps the cut's bound)
    low = cut[undecided] <= 0
    c, f = cut[undecided][low], full[undecided][low]
    assert low.any() and (c >= f - 1e-9 * (1.0 + np.abs(f))).all()  # (fewer rows: float64 noise)
