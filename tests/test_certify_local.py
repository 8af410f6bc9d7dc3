"""Backward CROWN for each box's intermediate neurons over its cone (``certify/local.py``).

- Sound: the margin bounds of boxes of one to three whole-range pixels stay below the exact
  minimum over each box, in float32 mode and in float64: on small residual CNNs
  (``nearboundary``'s family, built from ONNX) against an independent MILP on the oracle's own
  numpy network (``oracle.BoxMilp``); on CNNs with a MaxPool after two convolutions against the
  MILP of ``test_certify_support``. The tightened intermediate bounds contain every node's value
  at sampled points of the box.
- Tighter: on the zoo's ResNet (``benchmarks/zoo``), the deepest block's bounds of a one-pixel box
  shrink several times against the forward-mode bounds alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import nearboundary as nb
import oracle
from l0tre_core.certify import InputSet, Network, local
from l0tre_core.certify.boxes import Boxes, _clean, _forward, box_bounds
from l0tre_core.certify.bounds import spec_matrix
from l0tre_core.certify.search import problem_for
from test_certify_support import build_cnn, milp_min_margin

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"
TOL = 1e-7


def _case(family: str, seed: int, tmp_path: Path, **options: object) -> tuple[nb.Spec, Network, object, np.ndarray]:
    spec = nb.draw_spec(family, seed)
    spec = nb.replace(spec, norm="none", mean=None, std=None, options={**spec.options, **options})
    xs = nb.draw_inputs(spec, 4)
    model, onet = nb.build(spec, None)
    path = tmp_path / f"{family}{seed}.onnx"
    onnx.save(model, str(path))
    net = Network.from_onnx(onnx.load(str(path)), model.graph.input[0].name, model.graph.output[0].name,
                            spec.sample_shape)
    return spec, net, onet, xs


def _boxes(prob: object, units: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        pix = rng.choice(int(units.max()) + 1, k, replace=False)
        out.append(np.nonzero(np.isin(units, pix))[0])
    return out


def _bounds_both_ways(prob: object, sc: np.ndarray, ref: int) -> list[tuple[bool, np.ndarray]]:
    """The margin bounds ``[K-1]`` of the box freeing scalars ``sc`` over their whole range, for
    the float32 network and in float64 (``exact_arithmetic``)."""
    box = Boxes(sc[None], (prob.lo[sc] - prob.x0[sc])[None], (prob.hi[sc] - prob.x0[sc])[None],  # type: ignore[attr-defined]
                np.zeros(1, np.int64))
    out = []
    for arith in (False, True):
        prob.exact_arithmetic = arith  # type: ignore[attr-defined]
        try:
            out.append((arith, box_bounds(prob, box, ref)[0][0]))  # type: ignore[arg-type]
        finally:
            prob.exact_arithmetic = False  # type: ignore[attr-defined]
    return out


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the neurons whose bounds ``local.tighten`` narrows (so a test sees the pass ran)."""
    calls = {"tightened": 0}
    real = local.tighten

    def spy(*args: object, **kw: object) -> np.ndarray:
        before = [None if b is None else b[1] - b[0] for b in args[4]]  # type: ignore[index]
        out = real(*args, **kw)  # type: ignore[arg-type]
        after = [None if b is None else b[1] - b[0] for b in args[4]]  # type: ignore[index]
        calls["tightened"] += sum(int((a < w - 1e-12).sum()) for a, w in zip(after, before) if a is not None)
        return out

    monkeypatch.setattr(local, "tighten", spy)
    monkeypatch.setattr(local, "ENABLED", True)
    return calls


@pytest.mark.parametrize("seed", [3, 8])
def test_residual_box_margins_stay_below_the_milp_minimum(seed: int, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec, net, onet, xs = _case("residual", seed, tmp_path)
    calls = _spy(monkeypatch)
    lo, hi = spec.range
    units = oracle.unit_ids(spec.layout, spec.sample_shape, 1, spec.unit)
    rng = np.random.default_rng(seed)
    checked = 0
    for x in xs[:2]:
        x0 = x.reshape(-1).astype(np.float64)
        ref = int(np.argmax(onet.forward(x0[None])[0]))
        inputs = InputSet(x0=x0, lo=np.full_like(x0, lo), hi=np.full_like(x0, hi), pixel=units.astype(np.int64),
                          n_pixels=int(units.max()) + 1)
        prob = problem_for(net, inputs)
        prob.prepare_float32(3)  # the boxes below (1 to 3 pixels) lie in the ball
        for sc in _boxes(prob, units, rng, 4):
            xl, xu = x0.copy(), x0.copy()
            xl[sc], xu[sc] = lo, hi
            milp = oracle.BoxMilp(onet, xl, xu)
            exact = []
            for k in (k for k in range(net.n_outputs) if k != ref):
                r = milp.solve({ref: 1.0, k: -1.0})
                assert r is not None
                exact.append(r[0])
            for arith, lb in _bounds_both_ways(prob, sc, ref):
                assert (lb <= np.array(exact) + TOL).all(), (sc, arith, lb, exact)
                checked += len(exact)
    assert checked >= 16
    assert calls["tightened"] > 0, "no box went through the local pass: the test would not see it"


_SMALL = {"hw": (4, 4), "conv": (3, 3, 1, 1)}
_SOFTMAX_BN = {"hw": (4, 4), "conv": (3, 2, 1, 0), "pool_s": 1, "dense": 6, "softmax": True, "bn": True}


@pytest.mark.parametrize("seed,options", [(89, _SMALL), (86, _SOFTMAX_BN), (90, _SOFTMAX_BN)])
def test_maxpool_box_margins_stay_below_the_milp_minimum(seed: int, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conv, ReLU, Conv, ReLU, MaxPool, dense: the local pass goes back through the pool."""
    from test_certify_soundness import _input_set

    case = build_cnn(seed, **{"pool": "max", "second_conv": True, "dense": 8, **options})
    net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 1, case.d)
    ref = int(np.argmax(net.forward(x0[None])[0]))
    prob = problem_for(net, _input_set(case, x0))
    prob.prepare_float32(3)  # the boxes below (1 to 3 pixels) lie in the ball
    others = [k for k in range(net.n_outputs) if k != ref]
    for _ in range(4):
        pix = rng.choice(case.n_pixels, int(rng.integers(1, 4)), replace=False)
        sc = np.nonzero(np.isin(case.pixel, pix))[0]
        forced = np.zeros(case.n_pixels, bool)
        forced[pix] = True
        exact = [milp_min_margin(net, case, x0, ref, k, 0, forced=forced)[0] for k in others]
        for arith, lb in _bounds_both_ways(prob, sc, ref):
            assert (lb <= np.array(exact) + TOL).all(), (pix, arith, lb, exact)
    assert calls["tightened"] > 0, "no box went through the local pass: the test would not see it"


@pytest.mark.parametrize("seed", [5, 6])
def test_tightened_bounds_contain_every_sampled_value(seed: int, tmp_path: Path) -> None:
    spec, net, onet, xs = _case("residual", seed, tmp_path)
    lo, hi = spec.range
    units = oracle.unit_ids(spec.layout, spec.sample_shape, 1, spec.unit)
    rng = np.random.default_rng(seed)
    x0 = xs[0].reshape(-1).astype(np.float64)
    ref = int(np.argmax(net.forward(x0[None])[0]))
    inputs = InputSet(x0=x0, lo=np.full_like(x0, lo), hi=np.full_like(x0, hi), pixel=units.astype(np.int64),
                      n_pixels=int(units.max()) + 1)
    prob = problem_for(net, inputs)
    prob.prepare_float32(1)
    for exact in (False, True):
        prob.exact_arithmetic = exact
        for sc in _boxes(prob, units, rng, 6):
            S, dlo, dhi = sc[None], (prob.lo[sc] - prob.x0[sc])[None], (prob.hi[sc] - prob.x0[sc])[None]
            cones: dict[int, np.ndarray] = {}
            bounds, _, _, eps = _forward(prob, S, dlo, dhi, _clean(prob), inside_ball=False, cones_out=cones)
            local.tighten(prob, S, dlo, dhi, bounds, cones or None, eps, _clean(prob), spec_matrix(net.n_outputs, ref))
            pts = np.repeat(x0[None], 300, axis=0)
            pts[:, sc] = rng.uniform(lo, hi, (300, sc.size))
            pts[:100, sc] = rng.choice([lo, hi], (100, sc.size))  # corners
            vals = net.node_values(pts)
            for j in range(1, net.output):
                if bounds[j] is None:
                    continue
                tol = 1e-9 * (1 + np.abs(vals[j]).max())
                assert (vals[j] >= bounds[j][0][0] - tol).all() and (vals[j] <= bounds[j][1][0] + tol).all(), (j, exact)
    prob.exact_arithmetic = False


def test_the_resnets_deep_bounds_shrink() -> None:
    """A one-pixel box of the zoo's ResNet (3 free scalars, BatchNorm, residual Adds): the bounds
    of the last block's neurons, summed, shrink at least 4 times, and stay sound on a grid. (A
    central pixel's last block is too wide for one box's step, ``local.MAX_STEP``: its forward-mode
    bounds stay.)"""
    model = onnx.load(str(ZOO / "fmnist_resnet_pgd.onnx"))
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (3, 32, 32))
    x = np.load(ZOO / "fashion32_test_200.npz")["x"][0].astype(np.float64).transpose(2, 0, 1).reshape(-1) / 255
    m, s = 0.219, 0.3318
    x0 = (x - m) / s
    inputs = InputSet(x0=x0, lo=np.full(3072, -m / s), hi=np.full(3072, (1 - m) / s), pixel=np.arange(3072) % 1024,
                      n_pixels=1024)
    ref = int(np.argmax(net.forward(x0[None])[0]))
    prob = problem_for(net, inputs)
    prob.light = True
    prob.prepare_float32(1)
    sc = np.array([985, 2009, 3033])  # pixel (30, 25), its three channels
    S, dlo, dhi = sc[None], (prob.lo[sc] - prob.x0[sc])[None], (prob.hi[sc] - prob.x0[sc])[None]
    cones: dict[int, np.ndarray] = {}
    bounds, _, _, eps = _forward(prob, S, dlo, dhi, _clean(prob), cones_out=cones)
    last = max(j for j in range(1, net.output) if net.nodes[j].kind == "linear")
    before = float((bounds[last][1] - bounds[last][0]).sum())
    local.tighten(prob, S, dlo, dhi, bounds, cones, eps, _clean(prob), spec_matrix(net.n_outputs, ref))
    after = float((bounds[last][1] - bounds[last][0]).sum())
    assert after * 4 < before, (before, after)
    g = np.linspace(0, 1, 4)
    grid = np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T
    pts = np.repeat(x0[None], len(grid), axis=0)
    pts[:, sc] = prob.lo[sc] + grid * (prob.hi[sc] - prob.lo[sc])
    vals = net.node_values(pts)
    for j in range(1, net.output):
        assert (vals[j] >= bounds[j][0][0] - 1e-9).all() and (vals[j] <= bounds[j][1][0] + 1e-9).all(), j
