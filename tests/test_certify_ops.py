"""Operator coverage of the certifier's ONNX import, and exactness where exactness is owed.

- every supported operator: ``Network.forward`` equals onnxruntime, and the one-pass bounds hold
  on samples of the L0 set (a soundness smoke test per operator);
- unsupported operators raise ``UnsupportedOperator`` naming the operator;
- a purely linear model: the one-pass bound is exact (top-t rule), checked by brute force;
- t = 1 with splitting is complete on tiny ReLU nets: proven or refuted, never unknown, and it
  agrees with the exact MILP oracle.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from l0tre_core.certify import InputSet, Network, UnsupportedOperator, certify, margin_lower_bounds

from test_certify_support import Case, GraphBuilder, build_cnn, build_mlp, exact_min_margins, ort_logits

K = 3


def _finish(b: GraphBuilder, x: str, n_flat: int, in_shape: list[Any], sample: tuple[int, ...], pixel: np.ndarray,
            n_pixels: int, flatten: bool = True) -> Case:
    if flatten:
        x = b.op("Flatten", [x], axis=1)
    w = b.rng.normal(0, 1.5 / np.sqrt(n_flat), (K, n_flat))
    x = b.op("Gemm", [x, b.const(w), b.const(b.rng.normal(0, 0.2, K))], transB=1)
    m = b.model(in_shape, x, K)
    d = int(np.prod(sample))
    return Case(m, sample, pixel, n_pixels, np.zeros(d), np.ones(d))


def _img(c: int = 2, h: int = 4, w: int = 4) -> tuple[list[Any], tuple[int, ...], np.ndarray, int]:
    return ["N", c, h, w], (c, h, w), np.tile(np.arange(h * w), c), h * w


def _conv_case(seed: int, **attrs: Any) -> Callable[[], Case]:
    def make() -> Case:
        b = GraphBuilder(np.random.default_rng(seed))
        shape, sample, pixel, P = _img()
        group = attrs.get("group", 1)
        ks = attrs.pop("ks", 3)
        w = b.rng.normal(0, 0.5, (4, 2 // group, ks, ks))
        x = b.op("Conv", ["x", b.const(w), b.const(b.rng.normal(0, 0.1, 4))], kernel_shape=[ks, ks], **attrs)
        x = b.op("Relu", [x])
        probe = onnx.shape_inference.infer_shapes(b.model(shape, x, 1))
        n_flat = _flat_size(probe, x)
        b.nodes.pop()  # the Identity output node of the probe
        return _finish(b, x, n_flat, shape, sample, pixel, P)

    return make


def _flat_size(model: onnx.ModelProto, name: str) -> int:
    import onnxruntime as ort

    g = model.graph
    inter = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    m2 = helper.make_model(helper.make_graph(list(g.node), "p", list(g.input), [inter], list(g.initializer)),
                           opset_imports=list(model.opset_import))
    m2.ir_version = model.ir_version
    sess = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = g.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in inp]
    out = sess.run(None, {g.input[0].name: np.zeros(shape, np.float32)})[0]
    return int(np.prod(out.shape[1:]))


def _chain_case(seed: int, build: Callable[[GraphBuilder, str], str], img: tuple[int, int, int] = (2, 4, 4)) -> Callable[[], Case]:
    def make() -> Case:
        b = GraphBuilder(np.random.default_rng(seed))
        shape, sample, pixel, P = _img(*img)
        x = build(b, "x")
        n_flat = _flat_size(b.model(shape, x, 1), x)
        b.nodes.pop()
        return _finish(b, x, n_flat, shape, sample, pixel, P)

    return make


def _pool_then(op: str, **attrs: Any) -> Callable[[GraphBuilder, str], str]:
    def f(b: GraphBuilder, x: str) -> str:
        w = b.rng.normal(0, 0.6, (3, 2, 2, 2))
        x = b.op("Conv", [x, b.const(w), b.const(b.rng.normal(0, 0.1, 3))], kernel_shape=[2, 2], pads=[1, 1, 1, 1])
        x = b.op("Relu", [x])
        return b.op(op, [x], **attrs)

    return f


def _residual(b: GraphBuilder, x: str) -> str:
    w = b.rng.normal(0, 0.5, (2, 2, 3, 3))
    y = b.op("Conv", [x, b.const(w), b.const(b.rng.normal(0, 0.1, 2))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.op("Relu", [y])
    w2 = b.rng.normal(0, 0.5, (2, 2, 3, 3))
    y = b.op("Conv", [y, b.const(w2)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    z = b.op("Add", [y, x])  # skip connection from the input
    z = b.op("Relu", [z])
    u = b.op("Sub", [z, y])  # a second join of computed branches
    return b.op("LeakyRelu", [u], alpha=0.2)


def _concat_branches(b: GraphBuilder, x: str) -> str:
    w1 = b.rng.normal(0, 0.5, (3, 2, 2, 2))
    w2 = b.rng.normal(0, 0.5, (2, 2, 3, 3))
    y1 = b.op("Relu", [b.op("Conv", [x, b.const(w1)], kernel_shape=[2, 2], pads=[0, 0, 1, 1])])
    y2 = b.op("Tanh", [b.op("Conv", [x, b.const(w2)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    cat = b.op("Concat", [y1, y2], axis=1)
    return b.op("Sigmoid", [cat])


def _elementwise(b: GraphBuilder, x: str) -> str:
    c = b.rng.uniform(0.5, 1.5, (1, 2, 1, 1))
    x = b.op("Mul", [x, b.const(c)])
    x = b.op("Add", [b.const(b.rng.normal(0, 0.1, (4,))), x])  # broadcast over W, constant first
    x = b.op("Div", [x, b.const(np.full((1, 1, 4, 1), 1.7))])
    x = b.op("Sub", [b.const(np.full((1,), 0.3)), x])  # constant minus input
    x = b.op("Mul", [b.const(np.float32(-2.0)), x])
    x = b.op("Neg", [x])
    x = b.op("Identity", [x])
    x = b.op("Dropout", [x])
    x = b.op("Cast", [x], to=TensorProto.FLOAT)
    w = b.rng.normal(0, 0.5, (3, 2, 1, 1))
    return b.op("Relu", [b.op("Conv", [x, b.const(w)], kernel_shape=[1, 1])])


def _bn_gavg(b: GraphBuilder, x: str) -> str:
    w = b.rng.normal(0, 0.5, (4, 2, 3, 3))
    x = b.op("Conv", [x, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = b.op("BatchNormalization", [x, b.const(b.rng.uniform(0.5, 1.5, 4)), b.const(b.rng.normal(0, 0.2, 4)),
                                    b.const(b.rng.normal(0, 0.2, 4)), b.const(b.rng.uniform(0.5, 1.5, 4))])
    x = b.op("Relu", [x])
    return b.op("GlobalAveragePool", [x])


def _shape_chain(b: GraphBuilder, x: str) -> str:
    """A torch-style dynamic flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    x = b.op("Relu", [x])
    shp = b.op("Shape", [x])
    n = b.op("Gather", [shp, b.const_i64(0)], axis=0)
    n1 = b.op("Unsqueeze", [n, b.const_i64([0])])
    tgt = b.op("Concat", [n1, b.const_i64([-1])], axis=0)
    x = b.op("Reshape", [x, tgt])
    x = b.op("Unsqueeze", [x, b.const_i64([2])])  # [N, 32, 1]
    x = b.op("Squeeze", [x, b.const_i64([2])])
    w = b.rng.normal(0, 0.3, (32, 6))
    return b.op("Relu", [b.op("MatMul", [x, b.const(w)])])


def _transpose_reshape(b: GraphBuilder, x: str) -> str:
    x = b.op("Transpose", [x], perm=[0, 2, 3, 1])  # NHWC
    x = b.op("Reshape", [x, b.const_i64([0, 16, 2])])
    w = b.rng.normal(0, 0.6, (2, 5))
    x = b.op("MatMul", [x, b.const(w)])  # [N, 16, 5]
    x = b.op("Tanh", [x])
    return b.op("Reshape", [x, b.const_i64([-1, 80])])


def _gemm_variants(b: GraphBuilder, x: str) -> str:
    x = b.op("Flatten", [x], axis=1)
    w = b.rng.normal(0, 0.3, (32, 7))
    x = b.op("Gemm", [x, b.const(w), b.const(b.rng.normal(0, 0.1, (1, 7)))], alpha=0.7, beta=1.3)
    return b.op("Sigmoid", [x])


def _clip_pad_slice_reduce(b: GraphBuilder, x: str) -> str:
    x = b.op("Pad", [x, b.const_i64([0, 0, 1, 0, 0, 0, 0, 2]), b.const(np.float32(0.25))])  # [N,2,5,6]
    w = b.rng.normal(0, 0.8, (3, 2, 2, 2))
    x = b.op("Conv", [x, b.const(w), b.const(b.rng.normal(0, 0.3, 3))], kernel_shape=[2, 2])  # [N,3,4,5]
    y = b.op("Clip", [x, b.const(np.float32(0.0)), b.const(np.float32(0.6))])  # ReLU6-like
    z = b.op("Clip", [x, "", b.const(np.float32(0.2))])  # max only
    x = b.op("Add", [y, z])
    x = b.op("Slice", [x, b.const_i64([1, 0]), b.const_i64([4, 5]), b.const_i64([2, 3]), b.const_i64([2, 2])])  # [N,3,2,3]
    m = b.op("ReduceMean", [x], axes=[3], keepdims=0)  # [N,3,2] (opset 13: axes attribute)
    s = b.op("ReduceSum", [x, b.const_i64([2])], keepdims=0)  # [N,3,3]
    return b.op("Concat", [m, s], axis=2)


OP_CASES: dict[str, Callable[[], Case]] = {
    "clip_pad_slice_reduce": _chain_case(22, _clip_pad_slice_reduce),
    "conv_basic": _conv_case(1, pads=[1, 1, 1, 1]),
    "conv_stride_asym_pad": _conv_case(2, strides=[2, 1], pads=[1, 0, 0, 1]),
    "conv_dilation": _conv_case(3, dilations=[2, 2], pads=[2, 2, 2, 2]),
    "conv_group": _conv_case(4, group=2, pads=[1, 1, 1, 1]),
    "conv_same_upper": _conv_case(5, auto_pad="SAME_UPPER", strides=[2, 2], ks=2),
    "maxpool_basic": _chain_case(6, _pool_then("MaxPool", kernel_shape=[2, 2])),
    "maxpool_stride_pad": _chain_case(7, _pool_then("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "maxpool_ceil_dilated": _chain_case(8, _pool_then("MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, dilations=[1, 2])),
    "avgpool_basic": _chain_case(9, _pool_then("AveragePool", kernel_shape=[2, 2], strides=[2, 2])),
    "avgpool_pad_exclude": _chain_case(10, _pool_then("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)),
    "avgpool_pad_include": _chain_case(11, _pool_then("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    "avgpool_ceil": _chain_case(12, _pool_then("AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "bn_gavg": _chain_case(13, _bn_gavg),
    "elementwise_consts": _chain_case(14, _elementwise),
    "residual_add_sub": _chain_case(15, _residual),
    "concat_branches": _chain_case(16, _concat_branches),
    "shape_chain_reshape": _chain_case(17, _shape_chain),
    "transpose_reshape_matmul": _chain_case(18, _transpose_reshape),
    "gemm_alpha_beta": _chain_case(19, _gemm_variants),
    "mlp_softmax": lambda: build_mlp(20, softmax=True, act="leaky"),
    "cnn_nhwc": lambda: build_cnn(21, hw=(3, 3), channels=3, layout="nhwc", conv=(3, 2, 1, 0)),
}


def _net(case: Case, structured: bool = False) -> Network:
    """The imported network; ``structured`` keeps every convolution as a ConvOp."""
    from l0tre_core.certify import network

    saved = network.DENSE_CONV_MAX
    network.DENSE_CONV_MAX = -1 if structured else saved
    try:
        return Network.from_onnx(case.model, "x", "y", case.sample_shape)
    finally:
        network.DENSE_CONV_MAX = saved


def _sample_l0(case: Case, x0: np.ndarray, t: int, n: int, rng: np.random.Generator) -> np.ndarray:
    pts = np.broadcast_to(x0, (n, case.d)).copy()
    for i in range(n):
        pix = rng.choice(case.n_pixels, size=t, replace=False)
        sc = np.isin(case.pixel, pix)
        corner = rng.uniform() < 0.5
        v = rng.integers(0, 2, sc.sum()).astype(float) if corner else rng.uniform(0, 1, sc.sum())
        pts[i, sc] = case.lo[sc] + v * (case.hi[sc] - case.lo[sc])
    return pts


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_operator_forward_and_bounds(name: str, structured: bool) -> None:
    case = OP_CASES[name]()
    net = _net(case, structured)
    if structured and "conv" in name and "transpose" not in name:
        from l0tre_core.certify.network import ConvOp

        assert any(isinstance(w, ConvOp) for nd in net.nodes for w in nd.mats)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 1.5, (8, case.d))
    ref_out = ort_logits(case, x)
    mine = net.forward(x)
    if any(n.op_type == "Softmax" for n in case.model.graph.node):
        e = np.exp(mine - mine.max(1, keepdims=True))
        mine = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(mine, ref_out, atol=1e-4, rtol=1e-4)
    # one-pass bounds hold on samples of the set; verdicts agree with the samples
    for trial in range(2):
        x0 = rng.uniform(0, 1, case.d)
        z0 = net.forward(x0[None])[0]
        ref = int(np.argmax(z0))
        inputs = InputSet(x0, case.lo, case.hi, case.pixel.astype(np.int64), case.n_pixels)
        for t in (1, 2):
            pts = _sample_l0(case, x0, t, 600, rng)
            z = net.forward(pts)
            diffs = (z[:, [ref]] - z).min(axis=0)
            diffs[ref] = np.inf
            lbs = margin_lower_bounds(net, inputs, ref, t)
            assert np.all(lbs <= diffs + 1e-6), f"{lbs} > {diffs}"
            v = certify(net, inputs, ref, t, time_limit=5.0)
            if v.status == "proven":
                assert diffs.min() > -1e-6
            elif v.status == "refuted":
                assert int(np.argmax(ort_logits(case, v.witness[None])[0])) != ref
                assert np.unique(case.pixel[v.witness != x0]).size <= t


def test_unsupported_operator_is_named() -> None:
    b = GraphBuilder(np.random.default_rng(0))
    x = b.op("Cos", ["x"])
    x = b.op("Gemm", [x, b.const(np.ones((3, 4)))], transB=1)
    m = b.model(["N", 4], x, 3)
    with pytest.raises(UnsupportedOperator) as info:
        Network.from_onnx(m, "x", "y", (4,))
    assert info.value.op_type == "Cos"
    assert "operator Cos (node " in str(info.value)
    assert "is not supported by bound propagation" in str(info.value)


def test_product_of_two_branches_is_unsupported() -> None:
    b = GraphBuilder(np.random.default_rng(0))
    y = b.op("Relu", ["x"])
    x = b.op("Mul", ["x", y])
    x = b.op("Gemm", [x, b.const(np.ones((3, 4)))], transB=1)
    m = b.model(["N", 4], x, 3)
    with pytest.raises(UnsupportedOperator) as info:
        Network.from_onnx(m, "x", "y", (4,))
    assert info.value.op_type == "Mul"


def test_softmax_inside_the_graph_is_unsupported() -> None:
    b = GraphBuilder(np.random.default_rng(0))
    x = b.op("Gemm", ["x", b.const(np.ones((5, 4)))], transB=1)
    x = b.op("Softmax", [x], axis=1)
    x = b.op("Gemm", [x, b.const(np.ones((3, 5)))], transB=1)
    m = b.model(["N", 4], x, 3)
    with pytest.raises(UnsupportedOperator) as info:
        Network.from_onnx(m, "x", "y", (4,))
    assert info.value.op_type == "Softmax"


def _linear_case(seed: int, channels: int, conv: bool) -> Case:
    b = GraphBuilder(np.random.default_rng(seed))
    if conv:
        shape, sample, pixel, P = ["N", channels, 3, 3], (channels, 3, 3), np.tile(np.arange(9), channels), 9
        x = b.op("Sub", ["x", b.const(np.full((1, channels, 1, 1), 0.4))])
        x = b.op("Conv", [x, b.const(b.rng.normal(0, 1, (2, channels, 2, 2)))], kernel_shape=[2, 2])
        x = b.op("AveragePool", [x], kernel_shape=[2, 2])
        return _finish(b, x, 2, shape, sample, pixel, P)
    d = 6 * channels
    x = b.op("Div", ["x", b.const(np.full((1, d), 0.3))])
    x = b.op("Gemm", [x, b.const(b.rng.normal(0, 1, (5, d))), b.const(b.rng.normal(0, 1, 5))], transB=1)
    return _finish(b, x, 5, ["N", d], (d,), np.repeat(np.arange(6), channels), 6, flatten=False)


@pytest.mark.parametrize("seed,channels,conv", [(0, 1, False), (1, 3, False), (2, 1, True), (3, 2, True), (4, 1, False), (5, 1, True)])
def test_linear_model_one_pass_is_exact(seed: int, channels: int, conv: bool) -> None:
    case = _linear_case(seed, channels, conv)
    net = _net(case)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        x0 = rng.uniform(0, 1, case.d)
        z0 = net.forward(x0[None])[0]
        ref = int(np.argmax(z0))
        inputs = InputSet(x0, case.lo, case.hi, case.pixel.astype(np.int64), case.n_pixels)
        for t in (1, 2, 3):
            # brute force: a linear function is least at a corner of one of the boxes
            best = np.full(K, np.inf)
            for sub in itertools.combinations(range(case.n_pixels), t):
                sc = np.nonzero(np.isin(case.pixel, sub))[0]
                corners = np.array(list(itertools.product((0.0, 1.0), repeat=sc.size)))
                pts = np.broadcast_to(x0, (corners.shape[0], case.d)).copy()
                pts[:, sc] = corners
                z = net.forward(pts)
                best = np.minimum(best, (z[:, [ref]] - z).min(axis=0))
            best[ref] = np.inf
            lbs = margin_lower_bounds(net, inputs, ref, t)
            others = [k for k in range(K) if k != ref]
            np.testing.assert_allclose(lbs[others], best[others], atol=1e-9, rtol=1e-9)
            # brute force with onnxruntime agrees on the verdict
            v = certify(net, inputs, ref, t, split=False)
            assert (v.status == "proven") == (best[others].min() > 1e-8) or abs(best[others].min()) < 1e-6


T1_CASES = {
    "mlp": lambda s: build_mlp(s, n_pixels=9, hidden=(10, 8), k=3),
    "mlp_leaky_3ch": lambda s: build_mlp(s, n_pixels=5, channels=3, hidden=(8,), k=3, act="leaky"),
    "cnn": lambda s: build_cnn(s, hw=(4, 4), conv=(3, 3, 1, 1), dense=6),
    "cnn_maxpool": lambda s: build_cnn(s, hw=(4, 4), conv=(3, 2, 1, 0), pool="max", dense=None),
}


@pytest.mark.parametrize("kind", sorted(T1_CASES))
def test_t1_split_is_complete_and_agrees_with_milp(kind: str) -> None:
    counts = {"proven": 0, "refuted": 0}
    for seed in range(3):
        case = T1_CASES[kind](100 + seed)
        net = _net(case, structured=seed % 2 == 1)
        rng = np.random.default_rng(seed)
        for j in range(2):
            xs = rng.uniform(0, 1, (32, case.d))
            xs = np.where(rng.uniform(size=xs.shape) < 0.3, np.round(xs), xs)
            zs = np.sort(net.forward(xs), axis=1)
            # one robust input (largest clean margin of 32 draws) and one fragile (least)
            gap = zs[:, -1] - zs[:, -2]
            x0 = xs[int(np.argmax(gap))] if j == 0 else xs[int(np.argmin(gap))]
            ref = int(np.argmax(net.forward(x0[None])[0]))
            inputs = InputSet(x0, case.lo, case.hi, case.pixel.astype(np.int64), case.n_pixels)
            v = certify(net, inputs, ref, 1, time_limit=30.0)
            assert v.status in ("proven", "refuted"), v.detail
            counts[v.status] += 1
            exact, _ = exact_min_margins(net, case, x0, ref, 1)
            if v.status == "proven":
                assert exact.min() > -1e-6
            else:
                assert exact.min() < 0
                assert int(np.argmax(ort_logits(case, v.witness[None])[0])) != ref
                assert np.unique(case.pixel[v.witness != x0]).size <= 1
    assert counts["proven"] and counts["refuted"], counts


@pytest.mark.parametrize("seed", range(6))
def test_structured_convolution_matches_its_dense_matrix(seed: int) -> None:
    from l0tre_core.certify.network import ConvOp

    rng = np.random.default_rng(seed)
    group = [1, 2][seed % 2]
    c, m = 2 * group, 3 * group
    ks = [(3, 3), (2, 3), (1, 1)][seed % 3]
    in_shape = (c, 5 + seed % 2, 6)
    strides = [1 + seed % 2, 1 + (seed // 2) % 2]
    dil = [1 + (seed // 3) % 2, 1]
    pads = [seed % 2, 1, 0, (seed + 1) % 2]
    w = rng.normal(size=(m, c // group) + ks)
    op = ConvOp(w, in_shape, strides, pads, dil, group)
    dense = op.dense()
    x = rng.normal(size=(4, op.shape[1]))
    a = rng.normal(size=(2, 3, op.shape[0]))
    np.testing.assert_allclose(op.apply(x), x @ dense.T, atol=1e-12)
    np.testing.assert_allclose(op.back(a), a @ dense, atol=1e-12)
    np.testing.assert_allclose(op.abs().dense(), np.abs(dense), atol=1e-12)
    idx = rng.integers(0, op.shape[0], 5)
    np.testing.assert_allclose(op.rows(idx), dense[idx], atol=1e-12)
    S = rng.integers(0, op.shape[1], (3, 2))
    np.testing.assert_allclose(op.cols(S), dense[:, S], atol=1e-12)
    ch = rng.normal(size=op.out_shape[0])
    sc = op.scaled(np.repeat(ch, op.shape[0] // op.out_shape[0]))
    assert sc is not None
    np.testing.assert_allclose(sc.dense(), np.repeat(ch, op.shape[0] // op.out_shape[0])[:, None] * dense, atol=1e-12)
    # the convolution itself agrees with onnxruntime
    b = GraphBuilder(rng)
    y = b.op("Conv", ["x", b.const(w)], kernel_shape=list(ks), strides=strides, pads=pads, dilations=dil, group=group)
    model = b.model(["N", *in_shape], y, 1)
    case = Case(model, in_shape, np.zeros(op.shape[1], np.int64), 1, np.zeros(op.shape[1]), np.ones(op.shape[1]))
    np.testing.assert_allclose(op.apply(x), ort_logits(case, x).reshape(4, -1), atol=1e-4)


@pytest.mark.parametrize("path,shape", [
    ("l0tre_core/demo/mnist_cnn.onnx", (1, 28, 28)),
    ("tests/data/models/mlp_b1.onnx", (784,)),
    ("tests/data/models/cnn_nhwc.onnx", (28, 28, 1)),
])
def test_real_mnist_models(path: str, shape: tuple[int, ...]) -> None:
    """The shipped MNIST models import, match onnxruntime, and t = 1 is decided on a held-out image."""
    from pathlib import Path

    import onnxruntime as ort

    root = Path(__file__).resolve().parents[1]
    model = onnx.load(str(root / path))
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    net = Network.from_onnx(model, iname, oname, shape)
    x = np.load(root / "l0tre_core/demo/mnist_heldout_500.npz")["x"][:3].astype(np.float64) / 255.0
    sess = ort.InferenceSession(str(root / path), providers=["CPUExecutionProvider"])
    ref_out = np.concatenate([sess.run(None, {iname: x[i].reshape((1,) + shape).astype(np.float32)})[0] for i in range(3)])
    mine = net.forward(x.reshape(3, -1))
    if any(n.op_type == "Softmax" for n in model.graph.node):
        e = np.exp(mine - mine.max(1, keepdims=True))
        mine = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(mine, ref_out, atol=1e-4, rtol=1e-4)
    x0 = x[0].reshape(-1)  # one channel: every layout flattens to the same pixel order
    inputs = InputSet(x0, np.zeros(784), np.ones(784), np.arange(784), 784)
    ref = int(np.argmax(mine[0]))
    v = certify(net, inputs, ref, 1, time_limit=60.0)
    assert v.status in ("proven", "refuted"), v.detail
    if v.status == "refuted":
        w = v.witness.reshape((1,) + shape).astype(np.float32)
        assert int(np.argmax(sess.run(None, {iname: w})[0][0])) != ref
        assert int((v.witness != x0).sum()) <= 1
    lbs = margin_lower_bounds(net, inputs, ref, 1)
    assert lbs.shape == (10,) and lbs[ref] == np.inf
