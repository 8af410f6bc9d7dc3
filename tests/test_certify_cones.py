"""Boxes bounded over their cones (``certify/boxes.py``, ``ConvOp.apply_local``) and light ball
bounds (``Problem.light``): the same bounds as the whole-input computation, and sound.

The networks are the benchmark zoo's (``benchmarks/zoo``, ``scripts/zoo.py``): a ConvSmall, a CNN
with max-pooling and a ResNet with BatchNorm, residual Adds, average pooling and normalisation
outside the graph, whose convolutions are large enough to stay ``ConvOp``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest

from l0tre_core.certify import InputSet, Network, certify
from l0tre_core.certify import boxes as bx
from l0tre_core.certify.boxes import Boxes
from l0tre_core.certify.ops.affine import ConvOp
from l0tre_core.certify.search import margins, problem_for

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def _conv_cases(rng: np.random.Generator) -> list[ConvOp]:
    ops = []
    while len(ops) < 60:
        g = int(rng.choice([1, 2]))
        c, m = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 4))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = int(rng.integers(kh + 2, 12)), int(rng.integers(kw + 2, 12))
        s = [int(v) for v in rng.integers(1, 3, 2)]
        d = [int(v) for v in rng.integers(1, 3, 2)]
        pads = [int(v) for v in rng.integers(0, 3, 4)]
        if h + pads[0] + pads[2] - (kh - 1) * d[0] - 1 < 0 or w + pads[1] + pads[3] - (kw - 1) * d[1] - 1 < 0:
            continue
        ops.append(ConvOp(rng.normal(size=(m, c // g, kh, kw)), (c, h, w), s, pads, d, g))
    # a 1-D convolution (kept as 2-D with a unit height)
    ops.append(ConvOp(rng.normal(size=(3, 2, 3)), (2, 9), [2], [1, 1], [1], 1))
    return ops


def test_apply_local_is_the_convolution_over_the_cone() -> None:
    rng = np.random.default_rng(0)
    for op in _conv_cases(rng):
        n, din = 6, op.shape[1]
        x = np.zeros((n, din))
        support = np.zeros((n, din), dtype=bool)
        for i in range(n):
            k = int(rng.integers(0, 4))  # row 0..: some rows all zero
            idx = rng.choice(din, size=min(k, din), replace=False)
            support[i, idx] = True
            x[i, idx] = rng.normal(size=idx.size)
        full = op.apply(x)
        local, reach = op.apply_local(x, support)
        np.testing.assert_allclose(local, full, rtol=0, atol=1e-12)
        assert not full[~reach].any(), "an output outside the reported cone is not zero"
        # with a row over the whole input (the plain convolution, where the window is every output)
        support[-1], x[-1] = True, rng.normal(size=din)
        full = op.apply(x)
        local, reach = op.apply_local(x, support)
        np.testing.assert_allclose(local, full, rtol=0, atol=1e-12)
        assert not full[~reach].any()


def test_apply_pair_is_the_convolution_and_its_absolute_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ConvOp.apply_pair`` (dense blocks per support box) equals the convolution of ``x`` and the
    convolution by ``|W|`` of ``x_abs``, through its block cache, its evictions and its fallback
    for rows whose block is too large."""
    from l0tre_core.certify.ops import affine

    rng = np.random.default_rng(3)
    for limit, keep in ((affine.PAIR_BLOCK_MAX, affine.PAIR_CACHE_MAX), (200, 300)):
        monkeypatch.setattr(affine, "PAIR_BLOCK_MAX", limit)
        monkeypatch.setattr(affine, "PAIR_CACHE_MAX", keep)
        for op in _conv_cases(rng):
            n, (c, h, w) = 12, op.in_shape
            support = np.zeros((n, c, h, w), dtype=bool)
            for i in range(1, n):  # row 0 all zero; some rows a whole image
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                dy, dx = (h, w) if i % 5 == 0 else (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
                support[i, rng.random(c) < 0.7, y : y + dy, x : x + dx] = True
            support = support.reshape(n, -1)
            x = np.where(support, rng.normal(size=support.shape), 0.0)
            x_abs = np.where(support, rng.uniform(0, 1, size=support.shape), 0.0)
            for _ in range(2):  # the second time from the kept blocks
                out, out_abs = op.apply_pair(x, x_abs, support)
                np.testing.assert_allclose(out, op.apply(x), rtol=0, atol=1e-12)
                np.testing.assert_allclose(out_abs, op.abs().apply(x_abs), rtol=0, atol=1e-12)
            assert op._pair_kept <= max(keep, max(b[2].size for b in op._pair_blocks.values()))
            # a batch of all-zero rows (every free scalar's row cut off by dead ReLUs)
            zero = np.zeros((3, op.shape[1]))
            out, out_abs = op.apply_pair(zero, zero, zero != 0)
            assert out.shape == out_abs.shape == (3, op.shape[0]) and not out.any() and not out_abs.any()


def test_back_is_the_transposed_convolution_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ConvOp.back`` by its dense matrix (small convolutions) and by the transposed convolution."""
    from l0tre_core.certify.ops import affine

    rng = np.random.default_rng(4)
    for op in _conv_cases(rng):
        a = rng.normal(size=(2, 3, op.shape[0]))
        want = a @ op.dense()
        np.testing.assert_allclose(op.back(a), want, rtol=0, atol=1e-12)
        monkeypatch.setattr(affine, "BACK_DENSE_MAX", 0)
        np.testing.assert_allclose(ConvOp(op.w, op.in_shape, op.strides, op.pads, op.dilations, op.group).back(a),
                                   want, rtol=0, atol=1e-12)
        monkeypatch.undo()


def _mnist(i: int) -> np.ndarray:
    with gzip.open(MNIST) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[8000 + i]


def _fashion32(i: int) -> np.ndarray:
    x = np.load(ZOO / "fashion32_test_200.npz")["x"][i]  # [32, 32, 3] uint8
    return np.transpose(x, (2, 0, 1))


def _problem(name: str, i: int) -> tuple[Network, InputSet, int]:
    model = onnx.load(str(ZOO / f"{name}.onnx"))
    if name.startswith("fmnist"):
        img, m, s = _fashion32(i), 0.219, 0.3318
    else:
        img, m, s = _mnist(i)[None], 0.0, 1.0
    shape = img.shape
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, shape)
    x = ((img.astype(np.float64) / 255 - m) / s).reshape(-1)
    p = shape[1] * shape[2]
    inputs = InputSet(x0=x, lo=np.full_like(x, -m / s), hi=np.full_like(x, (1 - m) / s),
                      pixel=np.tile(np.arange(p), shape[0]), n_pixels=p)
    ref = int(np.argmax(net.forward(x[None])[0]))
    return net, inputs, ref


def _boxes(prob: object, pixels: list[list[int]], rng: np.random.Generator) -> Boxes:
    """Boxes with the given pixels free (all their channels), over a random part of the range."""
    parts = []
    for pix in pixels:
        sc = np.concatenate([prob.pixel_scalars[p] for p in pix])  # type: ignore[attr-defined]
        lo, hi, x0 = prob.lo[sc], prob.hi[sc], prob.x0[sc]  # type: ignore[attr-defined]
        a, b = np.sort(rng.uniform(lo, hi, size=(2, sc.size)), axis=0)
        whole = rng.random() < 0.5
        dlo = np.where(whole, lo, a) - x0
        dhi = np.where(whole, hi, b) - x0
        parts.append(Boxes(sc[None], dlo[None], dhi[None], np.zeros(1, np.int64)))
    return Boxes.concat(parts)


@pytest.mark.parametrize("name", ["mnist_convsmall", "mnist_maxpool", "fmnist_resnet"])
def test_cone_bounds_equal_whole_input_bounds_and_hold(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net, inputs, ref = _problem(name, 3)
    assert any(isinstance(w, ConvOp) for nd in net.nodes for w in nd.mats), "the zoo model should keep a ConvOp"
    prob = problem_for(net, inputs)
    prob.prepare_float32(2)
    rng = np.random.default_rng(1)
    P = prob.P
    pixels = [[int(p)] for p in rng.choice(P, 12, replace=False)]
    pixels += [[int(p), int(q)] for p, q in rng.choice(P, (8, 2), replace=False)]
    pixels += [[0], [P - 1], [0, P - 1]]  # corners: cones clipped at the borders
    boxes = _boxes(prob, pixels, rng)
    monkeypatch.setattr(bx, "CONES", False)
    whole, _ = bx.box_bounds(prob, boxes, ref)
    monkeypatch.setattr(bx, "CONES", True)
    cone, _ = bx.box_bounds(prob, boxes, ref)
    scale = max(1.0, float(np.abs(whole).max()))
    if any(nd.kind == "maxpool" for nd in net.nodes):
        # a MaxPool relaxation picks the window input with the largest lower bound: bounds equal up
        # to float64 noise (summation order) may pick another, equally valid one, so a few boxes
        # may differ; most must not
        same = np.abs(cone - whole).max(axis=1) <= 1e-9 * scale
        assert same.mean() >= 0.8, f"{(~same).sum()} of {same.size} boxes differ"
    else:
        np.testing.assert_allclose(cone, whole, rtol=0, atol=1e-9 * scale)
    # and they hold: points of each box have margins above the bound
    for _ in range(20):
        off = rng.uniform(boxes.dlo, boxes.dhi)
        pts = boxes.points(prob, off)
        z = net.forward(pts)
        m = z[:, ref][:, None] - np.delete(z, ref, axis=1)
        assert (m >= cone - 1e-9 * scale).all()


def test_light_mode_decides_t1_as_full_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Light ball bounds change what t = 1 costs, not what it decides."""
    from l0tre_core.certify import search

    verdicts = {}
    for width in (0, 10**9):  # light / full
        monkeypatch.setattr(search, "LIGHT_WIDTH", width)
        out = []
        for i in range(3):
            net, inputs, ref = _problem("mnist_convsmall", i)
            v = certify(net, inputs, ref, 1, time_limit=120)
            if v.status == "refuted":
                assert v.witness is not None and margins(net, ref, v.witness[None])[0] < 0
            out.append(v.status)
        verdicts[width] = out
    assert verdicts[0] == verdicts[10**9]
    assert "unknown" not in verdicts[0]
