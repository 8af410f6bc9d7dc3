"""Large layers stay structured: padding, slicing, transposition and average pooling in gather form
(``SparseMap``), and chains broken into nodes where a dense matrix would not fit.

The structured route is forced on tiny models by shrinking ``network.MAX_DENSE``; it must compute
the same network (forward pass against onnxruntime) and the same one-pass bounds as the dense route.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from l0tre_core.certify import InputSet, Network, margin_lower_bounds, network
from l0tre_core.certify.network import SparseMap
from test_certify_support import GraphBuilder


def _ort(model: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].astype(np.float64)

H = W = 5


def _cnn(kind: str) -> tuple[Any, tuple[int, ...]]:
    rng = np.random.default_rng(sum(map(ord, kind)))
    b = GraphBuilder(rng)
    x = b.op("Conv", ["x", b.const(rng.normal(0, 0.8, (3, 1, 3, 3))), b.const(rng.normal(0, 0.2, 3))],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = b.op("Relu", [x])  # [3, 5, 5]
    if kind == "pad_avgpool":
        x = b.op("Pad", [x, b.const_i64([0, 0, 1, 1, 0, 0, 1, 1])])
        x = b.op("AveragePool", [x], kernel_shape=[3, 3])
    elif kind == "avgpool_pads":
        x = b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    elif kind == "slice_transpose":
        x = b.op("Slice", [x, b.const_i64([1]), b.const_i64([4]), b.const_i64([2])])
        x = b.op("Transpose", [x], perm=[0, 1, 3, 2])
    elif kind == "residual":
        y = b.op("Conv", [x, b.const(rng.normal(0, 0.5, (3, 3, 3, 3))), b.const(rng.normal(0, 0.1, 3))],
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = b.op("Add", [x, y])
        x = b.op("Relu", [x])
    elif kind == "gavg":
        x = b.op("Mul", [x, b.const(rng.uniform(0.5, 2.0, (1, 3, 1, 1)))])
        x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    n = {"pad_avgpool": 75, "avgpool_pads": 27, "slice_transpose": 45, "residual": 75, "gavg": 3}[kind]
    x = b.op("Gemm", [x, b.const(rng.normal(0, 0.5, (n, 4))), b.const(rng.normal(0, 0.2, 4))])
    return b.model(["N", 1, H, W], x, 4), (1, H, W)


def _with_max_dense(limit: int, build: Callable[[], Any]) -> Any:
    saved = network.MAX_DENSE, network.DENSE_CONV_MAX
    network.MAX_DENSE, network.DENSE_CONV_MAX = limit, -1
    try:
        return build()
    finally:
        network.MAX_DENSE, network.DENSE_CONV_MAX = saved


KINDS = ["pad_avgpool", "avgpool_pads", "slice_transpose", "residual", "gavg"]


@pytest.mark.parametrize("kind", KINDS)
def test_structured_route_is_the_same_network_and_the_same_bounds(kind: str) -> None:
    model, shape = _cnn(kind)
    dense = Network.from_onnx(model, "x", "y", shape)
    small = _with_max_dense(1000, lambda: Network.from_onnx(model, "x", "y", shape))
    structured = any(isinstance(w, SparseMap) for nd in small.nodes for w in nd.mats)
    if kind in ("pad_avgpool", "slice_transpose", "residual"):  # (the others compose back into dense)
        assert structured or len(small.nodes) > len(dense.nodes)  # gather forms, or chains broken into nodes
    rng = np.random.default_rng(1)
    xs = rng.uniform(0, 1, (6, H * W))
    z = _ort(model, xs.reshape(6, 1, H, W).astype(np.float32))
    np.testing.assert_allclose(small.forward(xs), z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(small.forward(xs), dense.forward(xs), rtol=1e-10, atol=1e-10)
    x0 = xs[0]
    inputs = InputSet(x0=x0, lo=np.zeros(H * W), hi=np.ones(H * W), pixel=np.arange(H * W), n_pixels=H * W)
    ref = int(np.argmax(dense.forward(x0[None])[0]))
    for t in (1, 2):
        np.testing.assert_allclose(margin_lower_bounds(small, inputs, ref, t), margin_lower_bounds(dense, inputs, ref, t),
                                   rtol=1e-8, atol=1e-8)


def test_sparse_map_matches_its_dense_matrix() -> None:
    rng = np.random.default_rng(2)
    idx = rng.integers(-1, 7, (5, 3))
    m = SparseMap(idx, rng.normal(size=(5, 3)), 7)
    d = m.dense()
    x = rng.normal(size=(2, 4, 7))
    a = rng.normal(size=(3, 5))
    np.testing.assert_allclose(m.apply(x), x @ d.T)
    np.testing.assert_allclose(m.back(a), a @ d)
    np.testing.assert_allclose(m.abs().dense(), np.abs(d))
    np.testing.assert_allclose(m.rows(np.array([4, 0])), d[[4, 0]])
    cols = np.array([[1, 6], [0, 1]])
    np.testing.assert_allclose(m.cols(cols), d[:, cols])
    np.testing.assert_allclose(m.scaled(np.arange(5.0)).dense(), np.arange(5.0)[:, None] * d)
    assert (m.row_abs_max() >= np.abs(d).max(axis=1) - 1e-12).all()
    once = SparseMap(np.array([[0, 2], [1, -1]]), np.array([[0.5, -2.0], [3.0, 9.0]]), 3)
    np.testing.assert_allclose(once.row_abs_max(), [2.0, 3.0])
