"""The stem (``certify/stem.py``): the first wide layers' rows kept over each free scalar's cone
give the rows, bounds and float32 terms the full rows give, on the zoo's CNNs and on small CNNs
with colour pixels, max-pooling (padded, strided) and non-ReLU activations; and a block's margins
that the cut does not prove are the only ones taken on to the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from l0tre_core.certify import Network, network, stem
from l0tre_core.certify import boxes as bx
from l0tre_core.certify.boxes import Boxes, box_bounds, failing_rows
from l0tre_core.certify.problem import Budget
from l0tre_core.certify.search import problem_for
from test_certify_soundness import _input_set
from test_certify_support import build_cnn, milp_min_margin

ZOO = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo"


def _zoo(name: str) -> Network:
    model = onnx.load(str(ZOO / f"{name}.onnx"))
    return Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))


def _mixed_boxes(prob: object, rng: np.random.Generator, sizes: list[int]) -> Boxes:
    """Boxes freeing whole pixels (all their scalars, in order): whole ranges and parts of them,
    corners included, some padded."""
    parts = []
    P = prob.P  # type: ignore[attr-defined]
    for k in sizes:
        pix = rng.choice(P, k, replace=False)
        if rng.random() < 0.2:
            pix[0] = rng.choice([0, P - 1])  # a corner: cones clipped at the border
            pix = np.unique(pix)
        sc = np.concatenate([prob.pixel_scalars[p] for p in pix])  # type: ignore[attr-defined]
        lo, hi, x0 = prob.lo[sc], prob.hi[sc], prob.x0[sc]  # type: ignore[attr-defined]
        a, b = np.sort(rng.uniform(lo, hi, size=(2, sc.size)), axis=0)
        whole = rng.random() < 0.5
        parts.append(Boxes(sc[None], (np.where(whole, lo, a) - x0)[None], (np.where(whole, hi, b) - x0)[None],
                           np.zeros(1, np.int64)))
    return Boxes.concat(parts)


def _both_ways(prob: object, boxes: Boxes, budget: int | None, monkeypatch: pytest.MonkeyPatch) -> dict[bool, tuple]:
    """``_forward`` on ``boxes`` with the stem and without: every node's bounds, the output rows,
    the float32 terms."""
    S = boxes.S
    real = S >= 0
    dlo, dhi = np.where(real, boxes.dlo, 0.0), np.where(real, boxes.dhi, 0.0)
    limit = bx._budget(prob, boxes, budget)  # type: ignore[arg-type]
    if limit is not None:
        dlo, dhi = np.minimum(dlo, 0.0), np.maximum(dhi, 0.0)
    out = {}
    for on in (False, True):
        monkeypatch.setattr(stem, "ENABLED", on)
        out[on] = bx._forward(prob, S, dlo, dhi, bx._clean(prob), budget=limit)  # type: ignore[arg-type]
    return out


def _assert_same(out: dict[bool, tuple], net: Network) -> None:
    """Equal, to float64 noise; past the first max-pool, in most boxes: its lower row is the window
    input of largest lower bound, and where inputs tie (uniform background) the noise of another
    summation order may pick another, equally valid one, whose rows then differ downstream."""
    (b0, lo0, up0, e0), (b1, lo1, up1, e1) = out[False], out[True]
    pools = [j for j, nd in enumerate(net.nodes) if nd.kind == "maxpool"]
    first_pool = pools[0] if pools else len(net.nodes)

    def same(a: np.ndarray, b: np.ndarray, j: int) -> None:
        ok = np.isclose(b, a, rtol=1e-12, atol=1e-10)
        if j <= first_pool:
            assert ok.all(), f"node {j}: {np.abs(b - a).max()}"
        else:  # per box: a flipped choice changes every neuron it reaches in that box
            box_ok = ok.reshape(ok.shape[0], -1).all(axis=1)
            assert box_ok.mean() >= 0.8, f"node {j}: {(~box_ok).sum()} of {box_ok.size} boxes differ"

    for j, (full, cone) in enumerate(zip(b0, b1)):
        if full is not None:
            for a, b in zip(full, cone):
                same(a, b, j)
    same(lo0, lo1, len(net.nodes))
    same(up0, up1, len(net.nodes))
    assert set(e0) == set(e1)
    for j in e0:
        same(e0[j], e1[j], j)


def test_the_stem_is_the_first_wide_layers() -> None:
    for name, end in (("mnist_maxpool", 6), ("mnist_convsmall", 2), ("mnist_mlp", 0)):
        net = _zoo(name)
        x0 = np.full(784, 0.5)
        prob = problem_for(net, _mnist_inputs(x0))
        assert stem.stem_end(prob, bx.BUDGET_ROWS) == end, name
        if end:
            assert net.cut is not None and end <= net.cut


def _mnist_inputs(x0: np.ndarray) -> object:
    from l0tre_core.certify import InputSet

    return InputSet(x0=x0, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)


@pytest.mark.parametrize("name, policy", [("mnist_maxpool", "top"), ("mnist_maxpool", "sum"), ("mnist_convsmall", "top")])
def test_stem_rows_equal_the_full_rows_on_the_zoo(name: str, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``policy``: the max-pools' upper relaxation; "sum" frees several inputs of a window, which
    takes ``stem.pool_rows`` off its one-input path."""
    import gzip

    from l0tre_core.certify.ops import activation

    monkeypatch.setattr(activation, "_POOL_POLICY", policy)
    net = _zoo(name)
    with gzip.open(ZOO.parents[1].parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        img = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[8011]
    prob = problem_for(net, _mnist_inputs(img.astype(np.float64) / 255))
    prob.prepare_float32(2)
    rng = np.random.default_rng(3)
    for sizes, budget in (([1] * 12, None), ([2, 5, 16, 24, 24, 9], 2), ([3, 8, 1], None)):
        boxes = _mixed_boxes(prob, rng, sizes)
        assert stem.stem_end(prob, bx.BUDGET_ROWS) > 0
        _assert_same(_both_ways(prob, boxes, budget, monkeypatch), net)


@pytest.mark.parametrize("kw", [
    dict(channels=3, act="tanh", pool="max"),
    dict(channels=1, act="relu", pool="max", pool_s=2, second_conv=True),
    dict(channels=3, act="tanh", pool="max", pool_s=2, second_conv=True),
    dict(channels=3, act="sigmoid", pool=None),
    dict(channels=2, act="relu", pool="max", pool_k=3, pool_pad=1, pool_s=2),
])
def test_stem_rows_equal_the_full_rows_on_small_cnns(kw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small networks (every node narrower than ``BUDGET_ROWS``): the rule is lowered so that the
    stem runs there, and the full rows are taken with the same rule."""
    monkeypatch.setattr(bx, "BUDGET_ROWS", 0)
    monkeypatch.setattr(network, "DENSE_CONV_MAX", -1)  # convolutions kept structured, as on large inputs
    for seed in range(3):
        case = build_cnn(400 + seed, hw=(6, 6), **kw)  # type: ignore[arg-type]
        net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
        rng = np.random.default_rng(seed)
        x0 = rng.uniform(0, 1, case.d)
        prob = problem_for(net, _input_set(case, x0))
        prob.prepare_float32(2)
        assert stem.stem_end(prob, 0) == net.cut  # every layer before the dense head
        for sizes, budget in (([1] * 6, None), ([2, 4, 7, 1], 2)):
            boxes = _mixed_boxes(prob, rng, sizes)
            out = _both_ways(prob, boxes, budget, monkeypatch)
            _assert_same(out, net)
            # and the margins hold at points of each box
            ref = int(np.argmax(net.forward(x0[None])[0]))
            lb, _ = box_bounds(prob, boxes, ref)
            for _ in range(10):
                z = net.forward(boxes.points(prob, rng.uniform(boxes.dlo, boxes.dhi)))
                assert (z[:, ref][:, None] - np.delete(z, ref, axis=1) >= lb - 1e-9).all()
        if kw["act"] != "relu":  # (the MILP encodes ReLU networks)
            continue
        # a whole-range block of four pixels with a budget of 2: at most the MILP's minimum
        pix = rng.choice(prob.P, 4, replace=False)
        sc = np.concatenate([prob.pixel_scalars[p] for p in pix])
        block = Boxes(sc[None], (prob.lo[sc] - x0[sc])[None], (prob.hi[sc] - x0[sc])[None], np.zeros(1, np.int64))
        lb, _ = box_bounds(prob, block, ref, budget=2)
        excluded = np.ones(prob.P, bool)
        excluded[pix] = False
        for col, k in enumerate(c for c in range(net.n_outputs) if c != ref):
            truth, _ = milp_min_margin(net, case, x0, ref, k, 2, excluded=excluded)
            assert lb[0, col] <= truth + 1e-6, (kw, seed, k, lb[0, col], truth)


def test_failing_rows_lists_each_unproven_margin() -> None:
    fail = np.array([[False, True, False, True], [True, False, False, False], [False, False, False, True]])
    idx = failing_rows(fail)
    assert idx.shape == (3, 2)
    for row, got in zip(fail, idx):
        assert set(got) == set(np.flatnonzero(row))  # all of them, padded by repeating one


def test_a_block_proven_only_at_the_input_is_still_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    """The margins the cut proves stop there; the verdicts are those of taking every margin on."""
    import gzip

    net = _zoo("mnist_maxpool")
    with gzip.open(ZOO.parents[1].parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        img = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[8003]
    prob = problem_for(net, _mnist_inputs(img.astype(np.float64) / 255))
    prob.prepare_float32(2)
    ref = int(np.argmax(net.forward(prob.x0[None])[0]))
    boxes = _mixed_boxes(prob, np.random.default_rng(5), [6] * 8 + [40] * 8 + [120] * 8)
    some, _ = box_bounds(prob, boxes, ref, budget=2)
    monkeypatch.setattr(bx, "failing_rows", lambda fail: np.broadcast_to(np.arange(fail.shape[1]), fail.shape).copy())
    every, _ = box_bounds(prob, boxes, ref, budget=2)
    assert ((some.min(axis=1) > 0) == (every.min(axis=1) > 0)).all()
    low = some <= 0
    assert low.any()
    np.testing.assert_allclose(some[low], every[low], rtol=1e-9, atol=1e-9)
