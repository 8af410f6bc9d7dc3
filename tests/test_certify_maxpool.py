"""MaxPool's linear relaxation (``pool_relax`` in ``certify/ops/activation.py``) and its use in the
backward pass (``certify/bounds.py``) and the forward-mode rows (``certify/boxes.py``).

- the relaxation holds at sampled points of random window boxes (fixed inputs, ties in the lower
  bounds, padding entries), under every policy (the new one, the brief's sum over every input above
  ``L*``, and the old constant);
- with one free window input it is the chord of ``max(L*, x)`` (exact at both ends, exact
  everywhere when the free input's lower bound reaches the others), and it never exceeds the
  interval bound ``ub`` anywhere in the box;
- on small MaxPool CNNs: bounds over random boxes and over the L0 ball contain sampled margins, the
  forward-mode and backward bounds are on average tighter than with the old constant relaxation, and
  no box the old relaxation proves is lost;
- ``certify`` at t = 1 on a tiny MaxPool CNN agrees with the MILP oracle of ``tests/oracle.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import nearboundary as nb
import oracle
from l0tre_core.certify import InputSet, Network, certify
from l0tre_core.certify.boxes import BoxInput, Boxes, _forward, _lin_lower
from l0tre_core.certify.bounds import _Relax, backward, spec_matrix
from l0tre_core.certify.network import Node
from l0tre_core.certify.ops import activation
from l0tre_core.certify.ops.activation import pool_relax
from l0tre_core.certify.search import margin_lower_bounds, problem_for

from test_certify_support import build_cnn

TOL = 1e-9


def _window_node(rng: np.random.Generator, n_in: int, dout: int, k: int) -> Node:
    """A pooling node over ``n_in`` inputs with random windows; some entries padding (-1), never all."""
    idx = np.stack([rng.choice(n_in, k, replace=False) for _ in range(dout)])
    pad = rng.random((dout, k)) < 0.25
    pad[:, 0] = False
    idx = np.where(pad, -1, idx)
    return Node("maxpool", [0], dout, pool_idx=idx)


def _random_boxes(rng: np.random.Generator, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Input boxes with fixed entries (l = u), ties in the lower bounds (values on a coarse grid)."""
    l = np.round(rng.normal(size=(b, n)) * 2) / 2
    w = np.where(rng.random((b, n)) < 0.5, 0.0, rng.exponential(1.0, (b, n)))
    w = np.where(rng.random((b, n)) < 0.2, np.round(w * 2) / 2, w)  # ties in u too
    return l, l + w


def _window_max(x: np.ndarray, nd: Node) -> np.ndarray:
    vals = x[..., np.where(nd.pool_idx < 0, 0, nd.pool_idx)]
    return np.where(nd.pool_idx < 0, -np.inf, vals).max(axis=-1)


def _upper(pr: activation.PoolRelax, x: np.ndarray, nd: Node) -> np.ndarray:
    vals = x[..., np.where(nd.pool_idx < 0, 0, nd.pool_idx)]
    return pr.off + (pr.slope * vals).sum(axis=-1)


@pytest.mark.parametrize("policy", ["top", "sum", "old"])
def test_relaxation_holds_on_random_windows(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activation, "_POOL_POLICY", policy)
    rng = np.random.default_rng(0)
    for k in (2, 3, 4, 9):
        nd = _window_node(rng, 12, 10, k)
        l, u = _random_boxes(rng, 40, 12)
        pr = pool_relax(nd, l, u)
        assert np.isfinite(pr.off).all() and np.isfinite(pr.slope).all() and (pr.slope >= 0).all()
        assert (pr.slope[:, nd.pool_idx < 0] == 0).all()
        # sampled points, the corners of each input's interval among them
        for _ in range(60):
            pick = rng.random(l.shape)
            x = np.where(pick < 0.2, l, np.where(pick < 0.4, u, rng.uniform(l, u)))
            m = _window_max(x, nd)
            assert (np.take_along_axis(x, pr.istar, axis=1) <= m + TOL).all()
            assert (m <= _upper(pr, x, nd) + TOL).all()


def test_exact_or_best_linear_with_one_free_input() -> None:
    rng = np.random.default_rng(1)
    nd = _window_node(rng, 9, 30, 4)
    b = 50
    l = np.round(rng.normal(size=(b, 9)) * 2) / 2
    u = l.copy()
    # one free input per box (row), so every window holds at most one free input
    free = rng.integers(0, 9, b)
    rows = np.arange(b)
    u[rows, free] = l[rows, free] + rng.exponential(1.0, b)
    pr = pool_relax(nd, l, u)
    lstar = _window_max(l, nd)
    for frac in np.linspace(0.0, 1.0, 11):
        x = l.copy()
        x[rows, free] = l[rows, free] + frac * (u[rows, free] - l[rows, free])
        m = _window_max(x, nd)
        up = _upper(pr, x, nd)
        assert (up >= m - TOL).all()
        xf = x[rows, free][:, None]
        # the chord of max(L*, x_free) over [l_free, u_free] (the least linear upper bound)
        lf, uf = l[rows, free][:, None], u[rows, free][:, None]
        has = (nd.pool_idx == free[:, None, None]).any(axis=-1)  # [B, Dout]: the window holds it
        lo_end = np.maximum(lstar, lf)
        hi_end = np.maximum(lstar, uf)
        chord = lo_end + (hi_end - lo_end) * (xf - lf) / (uf - lf)
        np.testing.assert_allclose(np.where(has, up, 0.0), np.where(has, chord, 0.0), rtol=0, atol=1e-9)
        # windows without the free input are exactly their (fixed) maximum
        np.testing.assert_allclose(np.where(has, 0.0, up), np.where(has, 0.0, m), rtol=0, atol=1e-12)
        # exact everywhere where the free input's lower bound reaches the fixed inputs
        dom = has & (lf >= lstar)
        np.testing.assert_allclose(up[dom], m[dom], rtol=0, atol=1e-9)
        if frac in (0.0, 1.0):
            np.testing.assert_allclose(up, m, rtol=0, atol=1e-9)


def test_upper_never_above_the_interval_bound() -> None:
    """With several inputs above ``L*`` only the one with the largest ``u`` keeps a slope, so the
    bound stays under the window maximum ``ub`` at every point of the box; the brief's sum over
    every such input does not (its maximum is ``L* + sum (u_i - L*)``)."""
    rng = np.random.default_rng(2)
    nd = _window_node(rng, 16, 12, 4)
    l, u = _random_boxes(rng, 60, 16)
    pr = pool_relax(nd, l, u)
    assert (_upper(pr, u, nd) <= pr.ub + TOL).all()  # the maximum over the box: slopes >= 0
    assert np.array_equal(pr.ub, _window_max(u, nd))
    # and it is linear (not the constant) in the input with the largest u wherever that is free
    # beyond the others
    many = (pr.slope > 0).sum(axis=-1)
    assert many.max() == 1 and many.sum() > 0


# ----------------------------------------------------------------------------------------------
# on small MaxPool CNNs


def _cnn(seed: int) -> tuple[object, Network]:
    kw = dict(pool="max", pool_k=2, pool_s=2, pool_pad=1) if seed % 2 else dict(pool="max")
    case = build_cnn(seed, **kw)
    return case, Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)


def _bounds(net: Network, inputs: InputSet, ref: int, S: np.ndarray, dlo: np.ndarray, dhi: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """The forward-mode and the backward lower bounds of the margins over each box, both computed
    (``box_bounds`` runs the backward pass only where the forward one does not decide)."""
    prob = problem_for(net, inputs)
    prob.prepare_float32(2)
    bounds, lo, up, eps = _forward(prob, S, dlo, dhi, None)
    others = [k for k in range(net.n_outputs) if k != ref]
    fwd = _lin_lower(lo[:, :, [ref]] - up[:, :, others], dlo, dhi)
    c = spec_matrix(net.n_outputs, ref)
    bwd, _ = backward(prob, _Relax(net, bounds), net.output, c[None], None, S.shape[0], box=BoxInput(S, dlo, dhi),
                      rounding=eps)
    return fwd - prob.final_slack, bwd - prob.final_slack


@pytest.mark.parametrize("seed", [6, 7, 14, 15])
def test_cnn_bounds_hold_and_beat_the_constant(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    case, net = _cnn(seed)
    rng = np.random.default_rng(seed)
    gains = {"fwd": [], "bwd": []}
    for _ in range(3):
        x0 = rng.uniform(0, 1, case.d)
        x0 = np.where(rng.random(case.d) < 0.4, np.round(x0), x0)
        inputs = InputSet(x0=x0, lo=case.lo.astype(float), hi=case.hi.astype(float),
                          pixel=case.pixel.astype(np.int64), n_pixels=case.n_pixels)
        ref = int(np.argmax(net.forward(x0[None])[0]))
        S = np.stack([rng.choice(case.d, 3, replace=False) for _ in range(24)])
        S[:8, 1:] = -1  # one free scalar
        S[8:16, 2] = -1
        real = S >= 0
        a, b = np.sort(rng.uniform(case.lo[0], case.hi[0], (2,) + S.shape), axis=0)
        whole = rng.random(S.shape) < 0.5
        dlo = np.where(real, np.where(whole, case.lo[0], a) - x0[np.maximum(S, 0)], 0.0)
        dhi = np.where(real, np.where(whole, case.hi[0], b) - x0[np.maximum(S, 0)], 0.0)
        Sc = np.where(real, S, 0)
        res = {}
        for pol in ("old", "top"):
            monkeypatch.setattr(activation, "_POOL_POLICY", pol)
            res[pol] = _bounds(net, inputs, ref, Sc, dlo, dhi)
        # the new bounds contain the margins at sampled points of each box
        boxes = Boxes(S, dlo, dhi, np.zeros(len(S), np.int64))
        prob = problem_for(net, inputs)
        for _ in range(30):
            off = rng.uniform(dlo, dhi)
            z = net.forward(boxes.points(prob, off))
            m = z[:, [ref]] - np.delete(z, ref, axis=1)
            for lb in res["top"]:
                assert (m >= lb - 1e-6).all()
        for i, nm in enumerate(("fwd", "bwd")):
            old, new = res["old"][i], res["top"][i]
            # no box (over all its margins) the old relaxation proves is lost
            assert not ((old.min(axis=1) > 0) & ~(new.min(axis=1) > 0)).any(), nm
            gains[nm].append((new - old).mean())
        # the one-pass ball bound, t = 1 and 2
        for t in (1, 2):
            monkeypatch.setattr(activation, "_POOL_POLICY", "old")
            old = margin_lower_bounds(net, inputs, ref, t)
            monkeypatch.setattr(activation, "_POOL_POLICY", "top")
            new = margin_lower_bounds(net, inputs, ref, t)
            keep = np.isfinite(old)
            assert (new[keep] >= old[keep] - 1e-9).all(), (t, new - old)
    # and tighter on average (the bounds are not monotone in the relaxation everywhere: a tighter
    # intermediate interval can flip a ReLU's lower slope downstream)
    assert np.mean(gains["fwd"]) > 0 and np.mean(gains["bwd"]) > 0, gains


def test_certify_t1_agrees_with_the_milp_oracle(tmp_path: Path) -> None:
    """A tiny NCHW CNN with a padded 2x2 stride-2 MaxPool (``nearboundary``'s cnn family, untuned):
    ``certify`` at t = 1 (complete) against the exact MILP minimum of each margin over every pixel."""
    spec = nb.draw_spec("cnn", 52)
    spec = nb.replace(spec, options={**spec.options, "k": 2, "stride": 1, "pad": 1, "pool_pad": 1, "bn": False})
    xs = nb.draw_inputs(spec, 12)
    model, onet = nb.build(spec, nb._to_model(spec, xs[:1])[0])
    assert any(n.kind == "maxpool" and (n.pool_idx < 0).any() for n in onet.nodes), "want a padded MaxPool"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    net = Network.from_onnx(onnx.load(str(path)), model.graph.input[0].name, model.graph.output[0].name,
                            spec.sample_shape)
    lo, hi = spec.range
    units = oracle.unit_ids(spec.layout, spec.sample_shape, 1, spec.unit)
    seen = {"proven": 0, "refuted": 0}
    for x in xs:
        x0 = x.reshape(-1).astype(np.float64)
        ref = int(np.argmax(onet.forward(x0[None])[0]))
        if int(np.argmax(net.forward(x0[None])[0])) != ref:
            continue
        inputs = InputSet(x0=x0, lo=np.full_like(x0, lo), hi=np.full_like(x0, hi), pixel=units.astype(np.int64),
                          n_pixels=int(units.max()) + 1)
        v = certify(net, inputs, ref, 1, time_limit=30.0)
        mins, _ = oracle.exact_min_margins(onet, x0, lo, hi, units, ref, 1)
        worst = float(mins.min())
        if v.status == "proven":
            assert worst > -1e-6, f"certificate issued but the MILP finds margin {worst}"
        elif v.status == "refuted":
            assert worst < 1e-6
        else:
            pytest.fail(f"t = 1 is complete, got {v.status}: {v.detail}")
        if abs(worst) > 1e-3:
            assert v.status == ("proven" if worst > 0 else "refuted")
        seen[v.status] += 1
    assert seen["proven"] >= 2, seen
