"""Soundness of the bound-propagation certifier against independent oracles.

Never loosen a check here to make it pass: a failure is a soundness bug.

- Every sound lower bound of ``z_ref - z_k`` must be <= the margin at a point of the set that an
  exact MILP (ReLU / LeakyReLU / MaxPool nets) or a dense grid searched with onnxruntime (smooth
  nets) found.
- ``proven`` must never be issued where the oracle finds an adversarial example of size <= t.
- ``refuted`` witnesses are re-run in onnxruntime and their changed pixels recounted.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l0tre_core.certify import InputSet, Network, certify, margin_lower_bounds
from l0tre_core.certify.bounds import Boxes, Domains, box_bounds, spec_bounds
from l0tre_core.certify.search import problem_for

from test_certify_support import (
    Case,
    build_cnn,
    build_mlp,
    changed_pixels,
    exact_min_margins,
    grid_min_margins,
    margin_of,
    ort_logits,
)

TOL = 1e-6  # float64 arithmetic noise
ORT_TOL = 2e-5  # float32 onnxruntime vs float64 certifier

RELU_CASES = {
    "mlp_relu": lambda: build_mlp(1),
    "mlp_leaky_norm_softmax": lambda: build_mlp(2, act="leaky", normalise=True, softmax=True),
    "mlp_matmul_3ch_b1": lambda: build_mlp(3, n_pixels=5, channels=3, hidden=(8,), use_matmul=True, batch=1),
    "cnn_basic": lambda: build_cnn(4),
    "cnn_stride2_pad": lambda: build_cnn(5, conv=(4, 2, 2, 1)),
    "cnn_maxpool": lambda: build_cnn(6, pool="max"),
    "cnn_maxpool_s2_pad": lambda: build_cnn(7, pool="max", pool_k=2, pool_s=2, pool_pad=1, dense=None),
    "cnn_avgpool_bn": lambda: build_cnn(8, pool="avg", bn=True),
    "cnn_gavg_leaky": lambda: build_cnn(9, pool="gavg", act="leaky", dense=6),
    "cnn_3ch_norm": lambda: build_cnn(10, hw=(3, 3), channels=3, normalise=True, conv=(4, 2, 1, 0)),
    "cnn_3ch_nhwc_maxpool": lambda: build_cnn(11, hw=(3, 3), channels=3, layout="nhwc", conv=(3, 2, 1, 1), pool="max"),
    "cnn_leaky_softmax_reshape_b1": lambda: build_cnn(12, act="leaky", softmax=True, use_reshape=True),
    "cnn_dilated_grouped": lambda: build_cnn(13, channels=2, conv=(4, 2, 1, 1), dilation=2, group=2),
    "cnn_two_convs_maxpool": lambda: build_cnn(14, conv=(3, 2, 1, 0), second_conv=True, pool="max", dense=None),
}
EXACT_T2 = {"mlp_relu", "mlp_matmul_3ch_b1", "cnn_dilated_grouped", "cnn_stride2_pad"}
SMOOTH_CASES = {
    "mlp_sigmoid": lambda: build_mlp(20, n_pixels=6, act="sigmoid"),
    "mlp_tanh_norm": lambda: build_mlp(21, n_pixels=6, act="tanh", normalise=True),
    "cnn_tanh": lambda: build_cnn(22, hw=(3, 3), act="tanh", conv=(3, 2, 1, 0)),
    "cnn_sigmoid_3ch": lambda: build_cnn(23, hw=(2, 3), channels=3, act="sigmoid", conv=(3, 2, 1, 0), dense=5),
}


@functools.lru_cache(maxsize=None)
def _case(name: str) -> tuple[Case, Network]:
    """Every other convolutional case keeps its convolutions structured (ConvOp), the rest dense."""
    from l0tre_core.certify import network

    case = {**RELU_CASES, **SMOOTH_CASES}[name]()
    saved = network.DENSE_CONV_MAX
    if sorted({**RELU_CASES, **SMOOTH_CASES}).index(name) % 2:
        network.DENSE_CONV_MAX = -1
    try:
        net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
    finally:
        network.DENSE_CONV_MAX = saved
    return case, net


def _inputs(case: Case, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Clean inputs, half of them saturated at the range ends like real images; every other one
    picked near a decision boundary (least clean margin of 64 draws) so that labels do flip."""
    out = []
    for i in range(n):
        xs = rng.uniform(0, 1, (64, case.d))
        if i % 2 == 1:
            xs = np.where(rng.uniform(size=xs.shape) < 0.5, np.round(xs), xs)
        if i % 2 == 0:
            z = ort_logits(case, xs)
            m = np.sort(z, axis=1)
            out.append(xs[int(np.argmin(m[:, -1] - m[:, -2]))])
        else:
            out.append(xs[0])
    return out


def _input_set(case: Case, x0: np.ndarray) -> InputSet:
    return InputSet(x0=x0.astype(np.float64), lo=case.lo.astype(np.float64), hi=case.hi.astype(np.float64),
                    pixel=case.pixel.astype(np.int64), n_pixels=case.n_pixels)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _has_softmax(case: Case) -> bool:
    return any(n.op_type == "Softmax" for n in case.model.graph.node)


def _check_witness(case: Case, x0: np.ndarray, ref: int, t: int, w: np.ndarray) -> None:
    assert w is not None and w.shape == x0.shape
    z = ort_logits(case, w[None])[0]
    assert int(np.argmax(z)) != ref, "witness not adversarial in onnxruntime"
    assert changed_pixels(case, w, x0) <= t
    # every scalar of a changed pixel lies in the valid range
    pix = np.unique(case.pixel[w != x0])
    sc = np.isin(case.pixel, pix)
    assert np.all(w[sc] >= case.lo[sc]) and np.all(w[sc] <= case.hi[sc])


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted({**RELU_CASES, **SMOOTH_CASES}))
def test_forward_matches_onnxruntime(name: str) -> None:
    case, net = _case(name)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 1.5, size=(16, case.d))
    ref = ort_logits(case, x)
    mine = net.forward(x)
    if _has_softmax(case):
        mine = _softmax(mine)
    np.testing.assert_allclose(mine, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(RELU_CASES))
def test_relu_nets_against_milp(name: str) -> None:
    case, net = _case(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    stats = {"proven": 0, "refuted": 0, "unknown": 0}
    for x0 in _inputs(case, rng, 2):
        ref = int(np.argmax(ort_logits(case, x0[None])[0]))
        if int(np.argmax(net.forward(x0[None])[0])) != ref:
            continue  # a float32 tie; nothing to certify
        inputs = _input_set(case, x0)
        for t in (1, 2):
            lbs = margin_lower_bounds(net, inputs, ref, t)
            # MILP everywhere at t = 1; at t = 2 on the nets where it is quick, a dense grid elsewhere
            is_exact = t == 1 or name in EXACT_T2
            exact, _ = exact_min_margins(net, case, x0, ref, t, exact=is_exact)
            assert np.all(lbs <= exact + TOL), f"unsound one-pass bound: {lbs} > {exact} (t={t})"
            worst = exact.min()
            verdict = certify(net, inputs, ref, t, time_limit=20.0)
            stats[verdict.status] += 1
            print(name, t, verdict.status, verdict.detail, "oracle", round(float(worst), 4), "one-pass", round(float(lbs.min()), 4))
            if verdict.status == "proven":
                assert worst > -TOL, f"certificate issued but the MILP found margin {worst} at t={t}"
                assert lbs.min() > 0 or verdict.detail != "one-pass"
            elif verdict.status == "refuted":
                _check_witness(case, x0, ref, t, verdict.witness)
                assert worst < 0
            else:
                # t = 1 is complete; tiny nets at t = 2 are small enough to finish too
                pytest.fail(f"unknown at t={t}: {verdict.detail}")
            if worst < -1e-3:
                assert verdict.status == "refuted"
            if worst > 1e-3 and is_exact:
                assert verdict.status == "proven"


@pytest.mark.parametrize("name", ["mlp_relu", "cnn_maxpool", "cnn_3ch_norm", "cnn_avgpool_bn", "mlp_matmul_3ch_b1"])
def test_generalised_domains_against_milp(name: str) -> None:
    """The branch-and-bound domains: excluded pixels, forced pixels with narrowed boxes, a budget."""
    case, net = _case(name)
    rng = np.random.default_rng(7)
    for trial in range(4):
        x0 = _inputs(case, rng, 2)[trial % 2]
        ref = int(np.argmax(net.forward(x0[None])[0]))
        prob = problem_for(net, _input_set(case, x0))
        P = case.n_pixels
        perm = rng.permutation(P)
        forced = np.zeros(P, bool)
        excluded = np.zeros(P, bool)
        forced[perm[: trial % 3]] = True
        excluded[perm[2 : 2 + rng.integers(0, P // 2)]] = True
        has_pool = any(nd.kind == "maxpool" for nd in net.nodes)
        budget = int(rng.integers(0, 2 if has_pool else 3))  # MILPs over maxpool nets are slow
        # narrowed boxes on the forced pixels (may exclude x0)
        lo, hi = case.lo.copy(), case.hi.copy()
        for p in np.nonzero(forced)[0]:
            sc = case.pixel == p
            a, b = np.sort(rng.uniform(0, 1, 2))
            lo[sc], hi[sc] = a, b
        dlo = np.where(excluded[case.pixel], x0, lo)
        dhi = np.where(excluded[case.pixel], x0, hi)
        dom = Domains(dlo[None], dhi[None], forced[None], np.array([budget]))
        lb, _, _ = spec_bounds(prob, dom, ref)
        others = [k for k in range(net.n_outputs) if k != ref]
        exact, _ = exact_min_margins(net, case, x0, ref, budget, lo=lo, hi=hi, forced=forced, excluded=excluded)
        assert np.all(lb[0] <= exact[others] + TOL), f"unsound domain bound: {lb[0]} > {exact[others]}"
        if forced.any():
            # the box of the forced pixels alone (the leaves of the search)
            sc = np.concatenate([np.nonzero(case.pixel == p)[0] for p in np.nonzero(forced)[0]])
            boxes = Boxes(sc[None], (lo[sc] - x0[sc])[None], (hi[sc] - x0[sc])[None], np.zeros(1, np.int64))
            blb, _ = box_bounds(prob, boxes, ref)
            ex0, _ = exact_min_margins(net, case, x0, ref, 0, lo=lo, hi=hi, forced=forced, excluded=~forced)
            assert np.all(blb[0] <= ex0[others] + TOL), f"unsound box bound: {blb[0]} > {ex0[others]}"


@pytest.mark.parametrize("name", sorted(SMOOTH_CASES))
def test_smooth_nets_against_grid(name: str) -> None:
    case, net = _case(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    levels = {1: 9, 3: 4}[int(np.bincount(case.pixel).max())]
    for x0 in _inputs(case, rng, 2):
        ref = int(np.argmax(ort_logits(case, x0[None])[0]))
        if int(np.argmax(net.forward(x0[None])[0])) != ref:
            continue
        inputs = _input_set(case, x0)
        for t in (1, 2):
            grid, _ = grid_min_margins(case, x0, ref, t, levels)
            lbs = margin_lower_bounds(net, inputs, ref, t)
            assert np.all(lbs <= grid + ORT_TOL), f"unsound bound: {lbs} > {grid}"
            verdict = certify(net, inputs, ref, t, time_limit=10.0)
            if verdict.status == "proven":
                assert grid.min() > -ORT_TOL
            elif verdict.status == "refuted":
                _check_witness(case, x0, ref, t, verdict.witness)
            if grid.min() < -1e-3:
                assert verdict.status != "proven"


def test_box_bounds_smooth_against_sampling() -> None:
    """Forward-mode box bounds through Sigmoid/Tanh, checked by dense sampling of the box."""
    for name in SMOOTH_CASES:
        case, net = _case(name)
        rng = np.random.default_rng(3)
        x0 = rng.uniform(0, 1, case.d)
        ref = int(np.argmax(net.forward(x0[None])[0]))
        prob = problem_for(net, _input_set(case, x0))
        for p in range(case.n_pixels):
            sc = np.nonzero(case.pixel == p)[0]
            a = rng.uniform(0, 0.5, sc.size)
            b = a + rng.uniform(0, 0.5, sc.size)
            boxes = Boxes(sc[None], (a - x0[sc])[None], (b - x0[sc])[None], np.zeros(1, np.int64))
            lb, _ = box_bounds(prob, boxes, ref)
            pts = np.broadcast_to(x0, (400, case.d)).copy()
            pts[:, sc] = a + rng.uniform(0, 1, (400, sc.size)) * (b - a)
            z = net.forward(pts)
            diffs = (z[:, [ref]] - np.delete(z, ref, axis=1)).min(axis=0)
            assert np.all(lb[0] <= diffs + TOL)


def test_normalisation_inside_graph_is_sound() -> None:
    """Sub/Div at the front of the graph: the L0 set is over the RAW input, the bound must hold there.

    (A library that starts the perturbation after such a step certifies margins a one-pixel
    change already breaks; see research/certification-pitfalls.md.)"""
    case = build_mlp(31, n_pixels=6, hidden=(10,), normalise=True, gain=3.0)
    net = Network.from_onnx(case.model, "x", "y", case.sample_shape)
    # the Sub/Div folded into the first layer: the Network's input IS the raw input
    assert net.nodes[1].kind == "linear" and net.nodes[1].parents == [0]
    rng = np.random.default_rng(1)
    seen_refuted = False
    for x0 in _inputs(case, rng, 6):
        ref = int(np.argmax(ort_logits(case, x0[None])[0]))
        if int(np.argmax(net.forward(x0[None])[0])) != ref:
            continue
        inputs = _input_set(case, x0)
        for t in (1, 2):
            grid, _ = grid_min_margins(case, x0, ref, t, 17)
            lbs = margin_lower_bounds(net, inputs, ref, t)
            assert np.all(lbs <= grid + ORT_TOL)
            v = certify(net, inputs, ref, t, time_limit=10.0)
            if v.status == "proven":
                assert grid.min() > -ORT_TOL
            if v.status == "refuted":
                seen_refuted = True
                _check_witness(case, x0, ref, t, v.witness)
    assert seen_refuted, "the test should exercise flips"


def test_normalisation_outside_graph_is_sound() -> None:
    """Model expects (x - mean)/std; the set is given in model space with the range mapped."""
    case = build_cnn(32, hw=(3, 3), channels=1, conv=(3, 2, 1, 0), dense=6)
    mean, std = 0.1307, 0.3081
    net = Network.from_onnx(case.model, "x", "y", case.sample_shape)
    rng = np.random.default_rng(2)
    for raw in _inputs(case, rng, 4):
        x0 = (raw - mean) / std
        ref = int(np.argmax(ort_logits(case, x0[None])[0]))
        if int(np.argmax(net.forward(x0[None])[0])) != ref:
            continue
        lo = np.full(case.d, (0 - mean) / std)
        hi = np.full(case.d, (1 - mean) / std)
        inputs = InputSet(x0, lo, hi, case.pixel.astype(np.int64), case.n_pixels)
        mapped = Case(case.model, case.sample_shape, case.pixel, case.n_pixels, lo, hi)
        for t in (1, 2):
            grid, _ = grid_min_margins(mapped, x0, ref, t, 17)
            lbs = margin_lower_bounds(net, inputs, ref, t)
            assert np.all(lbs <= grid + ORT_TOL)
            exact, _ = exact_min_margins(net, mapped, x0, ref, t)
            assert np.all(lbs <= exact + TOL)
            verdict = certify(net, inputs, ref, t, time_limit=10.0)
            if verdict.status == "proven":
                assert grid.min() > -ORT_TOL
            elif verdict.status == "refuted":
                _check_witness(mapped, x0, ref, t, verdict.witness)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["mlp", "cnn"]),
    act=st.sampled_from(["relu", "leaky"]),
    normalise=st.booleans(),
    softmax=st.booleans(),
    pool=st.sampled_from([None, "max", "avg"]),
    channels=st.sampled_from([1, 2]),
    t=st.integers(1, 2),
)
def test_random_nets_against_milp(seed: int, kind: str, act: str, normalise: bool, softmax: bool,
                                  pool: str | None, channels: int, t: int) -> None:
    if kind == "mlp":
        case = build_mlp(seed, n_pixels=5, channels=channels, hidden=(7, 5), act=act, normalise=normalise, softmax=softmax, k=3)
    else:
        case = build_cnn(seed, hw=(3, 3), channels=channels, conv=(3, 2, 1, seed % 2), pool=pool, act=act,
                         normalise=normalise, softmax=softmax, dense=5, k=3)
    net = Network.from_onnx(case.model, "x", "y", case.sample_shape)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 1, case.d)
    z = ort_logits(case, x0[None])
    ref = int(np.argmax(z[0]))
    if int(np.argmax(net.forward(x0[None])[0])) != ref:
        return
    inputs = _input_set(case, x0)
    lbs = margin_lower_bounds(net, inputs, ref, t)
    exact, _ = exact_min_margins(net, case, x0, ref, t)
    assert np.all(lbs <= exact + TOL)
    worst = exact.min()
    verdict = certify(net, inputs, ref, t, time_limit=10.0)
    if verdict.status == "proven":
        assert worst > -TOL
    elif verdict.status == "refuted":
        _check_witness(case, x0, ref, t, verdict.witness)
    assert margin_of(ort_logits(case, x0[None]), ref)[0] >= -ORT_TOL


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_tiny_images_every_t_with_clean_input_outside_the_range(seed: int, pairs: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """3-4 pixels, t up to the pixel count, a valid range that excludes parts of the clean input:
    exercises the search where the budget stops binding, and witnesses that must move every
    scalar of a changed pixel into the range. ``pairs``: t = 2 goes straight to the enumeration
    of every pair of pixels."""
    if pairs:
        from l0tre_core.certify import search

        monkeypatch.setattr(search, "COVER_SWITCH_SHARE", 0.0)
    case = build_mlp(40 + seed, n_pixels=3 + seed % 2, channels=1 + seed % 2, hidden=(6,), k=3, gain=3.0)
    net = Network.from_onnx(case.model, "x", "y", case.sample_shape)
    rng = np.random.default_rng(seed)
    lo = np.full(case.d, 0.2)
    hi = np.full(case.d, 0.8)
    mcase = Case(case.model, case.sample_shape, case.pixel, case.n_pixels, lo, hi)
    for _ in range(3):
        x0 = rng.uniform(0, 1, case.d)  # some scalars outside [0.2, 0.8]
        ref = int(np.argmax(net.forward(x0[None])[0]))
        inputs = InputSet(x0, lo, hi, case.pixel.astype(np.int64), case.n_pixels)
        for t in range(1, case.n_pixels + 1):
            lbs = margin_lower_bounds(net, inputs, ref, t)
            exact, _ = exact_min_margins(net, mcase, x0, ref, t)
            assert np.all(lbs <= exact + TOL)
            v = certify(net, inputs, ref, t, time_limit=20.0)
            assert v.status != "unknown", v.detail
            if v.status == "proven":
                assert exact.min() > -TOL
            else:
                _check_witness(mcase, x0, ref, t, v.witness)
                assert exact.min() < 0


@pytest.mark.parametrize("share,hopeless", [(None, None), (50.0, np.inf), (None, 0.01)])
@pytest.mark.parametrize("name", ["mlp_relu", "cnn_maxpool", "cnn_3ch_nhwc_maxpool", "cnn_stride2_pad",
                                  "cnn_leaky_softmax_reshape_b1"])
def test_t2_cover_against_milp(name: str, share: float | None, hopeless: float | None,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """t = 2 by covering blocks (what the search switches to on CNNs). ``share``: blocks far
    larger than the predictor allows, every one bounded (none split unbounded), so blocks of
    many free pixels, outside the ball the float32 terms were prepared for, carry the proofs.
    ``hopeless`` 0.01: every task starts out hopeless, so the probes that raise the level
    (``_Cover._hopeless_level``, up to 2^10 times) run, and the tasks they prove or fail leave the
    cover complete."""
    from l0tre_core.certify import cover, search

    monkeypatch.setattr(search, "COVER_SWITCH_SHARE", 0.0)
    if share is not None:
        monkeypatch.setattr(search, "COVER_SHARE", share)
    if hopeless is not None:
        monkeypatch.setattr(search, "COVER_HOPELESS", hopeless)
        monkeypatch.setattr(search, "COVER_HOPELESS_DOUBLINGS", 10)
    probes: list[dict[int, bool]] = []
    real = cover._Cover._hopeless_level

    def spy(self: object, *args: object) -> tuple[float, dict[int, bool]]:
        level, probed = real(self, *args)  # type: ignore[arg-type]
        probes.append(probed)
        return level, probed

    monkeypatch.setattr(cover._Cover, "_hopeless_level", spy)
    case, net = _case(name)
    rng = np.random.default_rng(5)
    xs = rng.uniform(0, 1, (64, case.d))
    zs = np.sort(net.forward(xs), axis=1)
    robust = xs[int(np.argmax(zs[:, -1] - zs[:, -2]))]  # most likely proven, through the blocks
    for x0 in _inputs(case, rng, 2) + [robust]:
        ref = int(np.argmax(net.forward(x0[None])[0]))
        v = certify(net, _input_set(case, x0), ref, 2, time_limit=30.0)
        exact, _ = exact_min_margins(net, case, x0, ref, 2, exact=name in EXACT_T2)
        if v.status == "proven":
            assert exact.min() > -TOL
            assert v.detail.startswith("cover") or v.detail == "one-pass"
        elif v.status == "refuted":
            _check_witness(case, x0, ref, 2, v.witness)
        else:
            pytest.fail(v.detail)
    if hopeless == 0.01 and probes:  # (the cover ran: some inputs are decided before it)
        assert any(probed for probed in probes), "no task was probed"
