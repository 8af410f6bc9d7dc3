"""Support for the certifier's tests: tiny random ONNX classifiers and independent oracles.

- ``build_*``: small networks written with ``onnx.helper`` (dense, convolutional, pooling, batch
  norm, normalisation in front, NCHW / NHWC / flat inputs, an optional final Softmax).
- ``ort_logits``: onnxruntime, the reference semantics (float32).
- ``milp_min_margin``: the exact minimum of ``z_ref - z_k`` over an L0 set (generalised: forced,
  excluded pixels, a budget) by a big-M MILP (scipy HiGHS) over a ReLU/LeakyReLU/MaxPool network,
  returning the minimising point, re-evaluated with the network.
- ``grid_min_margins``: every t-subset of pixels times a grid per scalar, evaluated with
  onnxruntime (for smooth activations, where no MILP exists).

The tests at the bottom check the oracles themselves against brute force.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from l0tre_core.certify.network import as_dense

OPSET = 13
DISP = False


# ----------------------------------------------------------------------------------------------
# building models


@dataclass
class Case:
    model: onnx.ModelProto
    sample_shape: tuple[int, ...]
    pixel: np.ndarray  # [D]
    n_pixels: int
    lo: np.ndarray  # model-space valid range per scalar
    hi: np.ndarray
    input_name: str = "x"
    output_name: str = "y"
    smooth: bool = False  # sigmoid/tanh inside (no MILP oracle)
    note: str = ""

    @property
    def d(self) -> int:
        return int(np.prod(self.sample_shape))


class GraphBuilder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), nm))
        return nm

    def const_i64(self, arr: Any, base: str = "s") -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.int64), nm))
        return nm

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> str:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), **attrs))
        return outs[0]

    def act(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "leaky":
            return self.op("LeakyRelu", [x], alpha=0.1)
        if kind == "sigmoid":
            return self.op("Sigmoid", [x])
        if kind == "tanh":
            return self.op("Tanh", [x])
        raise ValueError(kind)

    def model(self, x_shape: list[Any], y: str, k: int, in_name: str = "x") -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [y], ["y"], name=self.name("n_out")))
        g = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, k])],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def _dense_w(rng: np.random.Generator, n_in: int, n_out: int, gain: float) -> np.ndarray:
    return rng.normal(0.0, gain / np.sqrt(n_in), size=(n_out, n_in))


def build_mlp(
    seed: int,
    n_pixels: int = 9,
    channels: int = 1,
    hidden: tuple[int, ...] = (12, 10),
    k: int = 4,
    act: str = "relu",
    normalise: bool = False,
    softmax: bool = False,
    use_matmul: bool = False,
    batch: Any = "N",
    gain: float = 2.5,
) -> Case:
    """Flat input [N, n_pixels * channels] (pixel-major: scalars of a pixel are adjacent)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(rng)
    d = n_pixels * channels
    x = "x"
    if normalise:
        mean = rng.uniform(0.1, 0.6, size=(1, d))
        std = rng.uniform(0.2, 0.5, size=(1, d))
        x = b.op("Sub", [x, b.const(mean)])
        x = b.op("Div", [x, b.const(std)])
    n_in = d
    for h in list(hidden) + [k]:
        w = _dense_w(rng, n_in, h, gain)
        bias = rng.normal(0.0, 0.3, size=h)
        if use_matmul:
            x = b.op("MatMul", [x, b.const(w.T)])
            x = b.op("Add", [x, b.const(bias)])
        else:
            x = b.op("Gemm", [x, b.const(w), b.const(bias)], transB=1)
        if h != k:
            x = b.act(x, act)
        n_in = h
    if softmax:
        x = b.op("Softmax", [x], axis=-1)
    m = b.model([batch, d], x, k)
    pixel = np.repeat(np.arange(n_pixels), channels)
    return Case(m, (d,), pixel, n_pixels, np.zeros(d), np.ones(d), smooth=act in ("sigmoid", "tanh"),
                note=f"mlp act={act} norm={normalise} sm={softmax}")


def build_cnn(
    seed: int,
    hw: tuple[int, int] = (4, 4),
    channels: int = 1,
    conv: tuple[int, int, int, int] = (4, 3, 1, 1),  # out channels, kernel, stride, pad
    dilation: int = 1,
    group: int = 1,
    pool: str | None = None,  # max | avg | gavg
    pool_k: int = 2,
    pool_s: int = 1,
    pool_pad: int = 0,
    bn: bool = False,
    act: str = "relu",
    second_conv: bool = False,
    dense: int | None = 8,
    k: int = 3,
    normalise: bool = False,
    softmax: bool = False,
    layout: str = "nchw",
    use_reshape: bool = False,
    gain: float = 2.5,
) -> Case:
    rng = np.random.default_rng(seed)
    b = GraphBuilder(rng)
    h, w = hw
    c = channels
    x = "x"
    if layout == "nhwc":
        x = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    if normalise:
        mean = rng.uniform(0.1, 0.6, size=(1, c, 1, 1))
        std = rng.uniform(0.2, 0.5, size=(1, c, 1, 1))
        x = b.op("Sub", [x, b.const(mean)])
        x = b.op("Div", [x, b.const(std)])
    oc, ks, st, pd = conv
    wt = rng.normal(0.0, gain / np.sqrt(c // group * ks * ks), size=(oc, c // group, ks, ks))
    x = b.op("Conv", [x, b.const(wt), b.const(rng.normal(0, 0.3, oc))], kernel_shape=[ks, ks],
             strides=[st, st], pads=[pd] * 4, dilations=[dilation, dilation], group=group)
    ext = (ks - 1) * dilation + 1
    h, w = (h + 2 * pd - ext) // st + 1, (w + 2 * pd - ext) // st + 1
    c = oc
    if bn:
        x = b.op("BatchNormalization", [x, b.const(rng.uniform(0.5, 1.5, c)), b.const(rng.normal(0, 0.2, c)),
                                        b.const(rng.normal(0, 0.2, c)), b.const(rng.uniform(0.5, 1.5, c))], epsilon=1e-5)
    x = b.act(x, act)
    if second_conv:
        wt2 = rng.normal(0.0, gain / np.sqrt(c * 4), size=(c, c, 2, 2))
        x = b.op("Conv", [x, b.const(wt2), b.const(rng.normal(0, 0.3, c))], kernel_shape=[2, 2], pads=[1, 1, 0, 0])
        x = b.act(x, act)
    if pool == "max":
        x = b.op("MaxPool", [x], kernel_shape=[pool_k, pool_k], strides=[pool_s, pool_s], pads=[pool_pad] * 4)
        h, w = (h + 2 * pool_pad - pool_k) // pool_s + 1, (w + 2 * pool_pad - pool_k) // pool_s + 1
    elif pool == "avg":
        x = b.op("AveragePool", [x], kernel_shape=[pool_k, pool_k], strides=[pool_s, pool_s], pads=[pool_pad] * 4)
        h, w = (h + 2 * pool_pad - pool_k) // pool_s + 1, (w + 2 * pool_pad - pool_k) // pool_s + 1
    elif pool == "gavg":
        x = b.op("GlobalAveragePool", [x])
        h, w = 1, 1
    n_flat = c * h * w
    if use_reshape:
        x = b.op("Reshape", [x, b.const_i64([1, -1])])
    else:
        x = b.op("Flatten", [x], axis=1)
    n_in = n_flat
    for hdim in ([dense] if dense else []) + [k]:
        wd = _dense_w(rng, n_in, hdim, gain)
        x = b.op("Gemm", [x, b.const(wd), b.const(rng.normal(0, 0.3, hdim))], transB=1)
        if hdim != k:
            x = b.act(x, act)
        n_in = hdim
    if softmax:
        x = b.op("Softmax", [x], axis=1)
    H, W = hw
    if layout == "nhwc":
        shape = [1 if use_reshape else "N", H, W, channels]
        sample = (H, W, channels)
        pixel = np.repeat(np.arange(H * W), channels)
    else:
        shape = [1 if use_reshape else "N", channels, H, W]
        sample = (channels, H, W)
        pixel = np.tile(np.arange(H * W), channels)
    m = b.model(shape, x, k)
    d = int(np.prod(sample))
    return Case(m, sample, pixel, H * W, np.zeros(d), np.ones(d), smooth=act in ("sigmoid", "tanh"),
                note=f"cnn {conv} pool={pool} bn={bn} act={act} layout={layout}")


# ----------------------------------------------------------------------------------------------
# reference semantics


_SESSIONS: dict[int, Any] = {}


def ort_logits(case: Case, x: np.ndarray) -> np.ndarray:
    """onnxruntime on ``x [B, D]`` (run one sample at a time when the batch is fixed to 1)."""
    import onnxruntime as ort

    key = id(case.model)
    if key not in _SESSIONS or _SESSIONS[key][0] is not case.model:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(case.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        _SESSIONS[key] = (case.model, sess)  # the model is kept alive so its id stays unique
    sess = _SESSIONS[key][1]
    x = np.asarray(x, dtype=np.float32).reshape((-1,) + case.sample_shape)
    dim0 = case.model.graph.input[0].type.tensor_type.shape.dim[0]
    if dim0.HasField("dim_value") and dim0.dim_value == 1:
        return np.concatenate([sess.run(None, {case.input_name: x[i : i + 1]})[0] for i in range(x.shape[0])])
    return np.concatenate([sess.run(None, {case.input_name: x[s : s + 4096]})[0] for s in range(0, x.shape[0], 4096)])


def margin_of(z: np.ndarray, ref: int) -> np.ndarray:
    return z[:, ref] - np.delete(z, ref, axis=1).max(axis=1)


def changed_pixels(case: Case, x: np.ndarray, x0: np.ndarray) -> int:
    return int(np.unique(case.pixel[np.asarray(x) != np.asarray(x0)]).size)


# ----------------------------------------------------------------------------------------------
# MILP oracle (ReLU, LeakyReLU, MaxPool networks), built on the imported Network's matrices.
# The import itself is validated separately against onnxruntime (forward equality).


def _ibp(net: Any, xl: np.ndarray, xu: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval bounds of every node for input boxes ``[..., D]`` (plain interval arithmetic)."""
    out = [(xl, xu)]
    for nd in net.nodes[1:]:
        if nd.kind == "linear":
            l = np.zeros(xl.shape[:-1] + (nd.size,)) + nd.bias
            u = l.copy()
            for p, w in zip(nd.parents, nd.mats):
                w = as_dense(w)
                pl, pu = out[p]
                if w is None:
                    l, u = l + pl, u + pu
                else:
                    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
                    l = l + pl @ wp.T + pu @ wn.T
                    u = u + pu @ wp.T + pl @ wn.T
            out.append((l, u))
        elif nd.kind == "relu":
            pl, pu = out[nd.parents[0]]
            out.append((np.maximum(pl, 0), np.maximum(pu, 0)))
        elif nd.kind == "leaky":
            pl, pu = out[nd.parents[0]]
            a = nd.alpha
            out.append((np.where(pl >= 0, pl, a * pl), np.where(pu >= 0, pu, a * pu)))
        elif nd.kind == "maxpool":
            pl, pu = out[nd.parents[0]]
            idx = nd.pool_idx
            vl = np.where(idx >= 0, pl[..., np.maximum(idx, 0)], -np.inf)
            vu = np.where(idx >= 0, pu[..., np.maximum(idx, 0)], -np.inf)
            out.append((vl.max(-1), vu.max(-1)))
        else:
            raise ValueError(f"no MILP encoding for {nd.kind}")
    return out


class _Milp:
    """The big-M MILP of a network over a (generalised) L0 set, built once, solved per class."""

    def __init__(
        self,
        net: Any,
        case: Case,
        x0: np.ndarray,
        budget: int,
        lo: np.ndarray,
        hi: np.ndarray,
        forced: np.ndarray,
        excluded: np.ndarray,
    ) -> None:
        from scipy.optimize import Bounds, LinearConstraint
        from scipy.sparse import coo_matrix

        self.net, self.case, self.x0 = net, case, x0
        self.lo, self.hi, self.forced, self.excluded = lo, hi, forced, excluded
        P = case.n_pixels
        pixel = case.pixel
        d = x0.size
        xl = np.where(excluded[pixel], x0, np.where(forced[pixel], lo, np.minimum(lo, x0)))
        xu = np.where(excluded[pixel], x0, np.where(forced[pixel], hi, np.maximum(hi, x0)))
        self.xl, self.xu = xl, xu
        ib = _ibp(net, xl, xu)
        var_lb: list[np.ndarray] = []
        var_ub: list[np.ndarray] = []
        integ: list[np.ndarray] = []
        count = [0]

        def new(n: int, lb: Any, ub: Any, integer: bool = False) -> np.ndarray:
            idx = np.arange(count[0], count[0] + n)
            count[0] += n
            var_lb.append(np.broadcast_to(np.asarray(lb, float), (n,)))
            var_ub.append(np.broadcast_to(np.asarray(ub, float), (n,)))
            integ.append(np.full(n, 1 if integer else 0))
            return idx

        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        clb: list[float] = []
        cub: list[float] = []

        def con(terms: list[tuple[int, float]], lb: float, ub: float) -> None:
            r = len(clb)
            for cidx, v in terms:
                if v == 0.0:
                    continue  # explicit zeros upset HiGHS
                rows.append(r)
                cols.append(int(cidx))
                vals.append(float(v))
            clb.append(lb)
            cub.append(ub)

        xv = new(d, xl, xu)
        free = ~forced & ~excluded
        self.free = free
        sv = new(P, 0.0, np.where(free, 1.0, 0.0), integer=True)
        for i in range(d):
            p = pixel[i]
            if free[p]:
                # s = 0: x = x0; s = 1: x in [lo, hi]
                con([(xv[i], 1.0), (sv[p], -(hi[i] - x0[i]))], -np.inf, x0[i])
                con([(xv[i], 1.0), (sv[p], -(lo[i] - x0[i]))], x0[i], np.inf)
        if free.any():
            con([(sv[p], 1.0) for p in range(P) if free[p]], -np.inf, float(budget))
        var_of = [xv]
        slack = 1e-4  # HiGHS needs room around neurons that the set pins to one value
        for j, nd in enumerate(net.nodes[1:], start=1):
            l, u = ib[j]
            if nd.kind == "linear":
                mats = [as_dense(w) for w in nd.mats]
                z = new(nd.size, l - slack, u + slack)
                for r in range(nd.size):
                    terms = [(z[r], 1.0)]
                    for p, w in zip(nd.parents, mats):
                        if w is None:
                            terms.append((var_of[p][r], -1.0))
                        else:
                            nzc = np.nonzero(w[r])[0]
                            terms += [(var_of[p][c], -w[r, c]) for c in nzc]
                    con(terms, nd.bias[r], nd.bias[r])
                var_of.append(z)
            elif nd.kind in ("relu", "leaky"):
                a = 0.0 if nd.kind == "relu" else nd.alpha
                zl, zu = ib[nd.parents[0]]
                zv = var_of[nd.parents[0]]
                y = new(nd.size, np.minimum(l, 0) - slack, u + slack)
                for r in range(nd.size):
                    if zl[r] >= 0:
                        con([(y[r], 1.0), (zv[r], -1.0)], 0.0, 0.0)
                    elif zu[r] <= 0:
                        con([(y[r], 1.0), (zv[r], -a)], 0.0, 0.0)
                    else:
                        dlt = new(1, 0.0, 1.0, integer=True)[0]
                        con([(y[r], 1.0), (zv[r], -1.0)], 0.0, np.inf)
                        con([(y[r], 1.0), (zv[r], -a)], 0.0, np.inf)
                        # delta = 1: y <= z ; delta = 0: y <= a z
                        m1 = (a - 1.0) * zl[r]  # >= max(a z - z) on [l, 0]
                        m2 = (1.0 - a) * zu[r]  # >= max(z - a z) on [0, u]
                        con([(y[r], 1.0), (zv[r], -1.0), (dlt, m1)], -np.inf, m1)
                        con([(y[r], 1.0), (zv[r], -a), (dlt, -m2)], -np.inf, 0.0)
                var_of.append(y)
            elif nd.kind == "maxpool":
                zl, zu = ib[nd.parents[0]]
                zv = var_of[nd.parents[0]]
                y = new(nd.size, l - slack, u + slack)
                for r in range(nd.size):
                    win = [i for i in nd.pool_idx[r] if i >= 0]
                    # inputs that can never be the max need no selector
                    win = [i for i in win if zu[i] >= l[r]]
                    for i in win:
                        con([(y[r], 1.0), (zv[i], -1.0)], 0.0, np.inf)
                    if len(win) == 1:
                        con([(y[r], 1.0), (zv[win[0]], -1.0)], 0.0, 0.0)
                        continue
                    q = new(len(win), 0.0, 1.0, integer=True)
                    for i, qi in zip(win, q):
                        big = u[r] - zl[i]
                        con([(y[r], 1.0), (zv[i], -1.0), (qi, big)], -np.inf, big)
                    con([(qi, 1.0) for qi in q], 1.0, 1.0)
                var_of.append(y)
            else:
                raise ValueError(nd.kind)
        n = count[0]
        self.n, self.xv, self.sv, self.out = n, xv, sv, var_of[net.output]
        self.bounds = Bounds(np.concatenate(var_lb), np.concatenate(var_ub))
        A = coo_matrix((vals, (rows, cols)), shape=(len(clb), n)).tocsr()
        self.constraints = LinearConstraint(A, np.array(clb), np.array(cub))
        self.integrality = np.concatenate(integ)

    def lp_bound(self, ref: int, k: int) -> float:
        """A lower bound on min ``z_ref - z_k`` (the LP relaxation)."""
        from scipy.optimize import milp

        c = np.zeros(self.n)
        c[self.out[ref]], c[self.out[k]] = 1.0, -1.0
        res = milp(c, integrality=np.zeros(self.n), bounds=self.bounds, constraints=self.constraints)
        if res.x is None:
            return -np.inf  # no bound: the box is then solved exactly
        return float(res.fun) - 1e-6 * (1.0 + abs(res.fun))

    def solve(self, ref: int, k: int, time_limit: float = 30.0) -> tuple[float, np.ndarray]:
        """min of ``z_ref - z_k``: the margin (recomputed with the network) at the point found."""
        from scipy.optimize import milp

        c = np.zeros(self.n)
        c[self.out[ref]], c[self.out[k]] = 1.0, -1.0
        res = None
        for presolve in (True, False):  # HiGHS occasionally reports a solve error with presolve
            res = milp(c, integrality=self.integrality, bounds=self.bounds, constraints=self.constraints,
                       options={"time_limit": time_limit, "mip_rel_gap": 1e-6, "disp": DISP, "presolve": presolve})
            if res.x is not None:
                break
        if res is None or res.x is None:
            raise RuntimeError(f"MILP failed: {res.message if res is not None else ''}")
        x = np.clip(res.x[self.xv], self.xl, self.xu)
        pixel, x0 = self.case.pixel, self.x0
        # snap to a genuine member of the set: unchanged pixels exactly x0, count <= budget
        for p in range(self.case.n_pixels):
            sc = pixel == p
            if self.excluded[p] or (self.free[p] and res.x[self.sv[p]] < 0.5):
                x[sc] = x0[sc]
            elif not self.forced[p]:
                x[sc] = np.clip(x[sc], self.lo[sc], self.hi[sc])
        z = self.net.forward(x[None])[0]
        return float(z[ref] - z[k]), x


def _set_args(case: Case, lo: Any, hi: Any, forced: Any, excluded: Any) -> tuple[np.ndarray, ...]:
    P = case.n_pixels
    return (
        case.lo if lo is None else lo,
        case.hi if hi is None else hi,
        np.zeros(P, bool) if forced is None else forced,
        np.zeros(P, bool) if excluded is None else excluded,
    )


def milp_min_margin(
    net: Any,
    case: Case,
    x0: np.ndarray,
    ref: int,
    k: int,
    budget: int,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
    forced: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """min of ``z_ref - z_k`` over the set (one MILP with a binary "changed" per pixel).

    The set: pixels in ``excluded`` stay at ``x0``; pixels in ``forced`` take any value in their box
    ``[lo, hi]``; at most ``budget`` other pixels change, each to a value in its box.
    Returns the margin (recomputed with ``net.forward``) at the point found, a genuine member of
    the set, so every sound lower bound must be <= it; and the point.
    """
    lo, hi, forced, excluded = _set_args(case, lo, hi, forced, excluded)
    return _Milp(net, case, x0, budget, lo, hi, forced, excluded).solve(ref, k)


def exact_min_margins(
    net: Any,
    case: Case,
    x0: np.ndarray,
    ref: int,
    budget: int,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
    forced: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    levels: int | None = None,
    exact: bool = True,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Exact ``min (z_ref - z_k)`` for every k over the (generalised) L0 set.

    Enumerates the subsets of ``budget`` changed pixels; searches each box on a grid first, then
    solves a MILP on every box whose LP relaxation does not rule it out (boxes with the least grid
    values first). Returns ``[K]`` minima (+inf at ref), each the margin of a genuine member of the
    set (recomputed with the network), and the minimising points. ``exact=False`` stops after the
    grid (an upper bound on the minimum: still a valid check, but blind to narrow regions)."""
    lo, hi, forced, excluded = _set_args(case, lo, hi, forced, excluded)
    P = case.n_pixels
    cand = np.nonzero(~forced & ~excluded)[0]
    # boxes of exactly `budget` pixels cover the smaller changes when every box holds x0;
    # otherwise enumerate every size up to the budget
    holds_x0 = bool(np.all((lo <= x0) & (x0 <= hi)))
    sizes = [min(budget, cand.size)] if holds_x0 else range(min(budget, cand.size) + 1)
    subsets = [np.array(s, dtype=np.int64) for r in sizes for s in itertools.combinations(cand, r)]
    masks = np.zeros((len(subsets), P), bool)
    for i, s in enumerate(subsets):
        masks[i, s] = True
    masks |= forced
    best = np.full(net.n_outputs, np.inf)
    arg: list[np.ndarray | None] = [None] * net.n_outputs
    # grid stage
    box_min = np.full((len(subsets), net.n_outputs), np.inf)
    for i in range(len(subsets)):
        sc = np.nonzero(masks[i][case.pixel])[0]
        if levels is None:
            lv = max(2, int(round(300 ** (1.0 / max(1, sc.size)))))
        else:
            lv = levels
        g = np.linspace(0.0, 1.0, lv)
        combo = np.array(list(itertools.product(range(lv), repeat=sc.size))) if sc.size else np.zeros((1, 0), int)
        pts = np.broadcast_to(x0, (combo.shape[0], x0.size)).copy()
        pts[:, sc] = lo[sc] + g[combo] * (hi[sc] - lo[sc])
        z = net.forward(pts)
        diff = z[:, [ref]] - z
        box_min[i] = diff.min(axis=0)
        for k in range(net.n_outputs):
            j = int(np.argmin(diff[:, k]))
            if k != ref and diff[j, k] < best[k]:
                best[k], arg[k] = diff[j, k], pts[j]
    # exact stage
    for i in np.argsort(box_min.min(axis=1)) if exact else []:
        m = None
        for k in range(net.n_outputs):
            if k == ref:
                continue
            if m is None:
                m = _Milp(net, case, x0, 0, lo, hi, masks[i], ~masks[i])
            if m.lp_bound(ref, k) >= best[k]:
                continue
            v, x = m.solve(ref, k)
            if v < best[k]:
                best[k], arg[k] = v, x
    best[ref] = np.inf
    return best, arg


# ----------------------------------------------------------------------------------------------
# grid oracle (any network)


def grid_min_margins(case: Case, x0: np.ndarray, ref: int, t: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """For each class k: min over t-subsets and grid points of ``z_ref - z_k`` (onnxruntime).

    Returns (``[K]`` minima with +inf at ref, the point of least overall margin)."""
    pixel, P = case.pixel, case.n_pixels
    grid_1d = np.linspace(0.0, 1.0, levels)
    best = None
    best_x, best_m = x0, np.inf
    for subset in itertools.combinations(range(P), t):
        sc = np.concatenate([np.nonzero(pixel == p)[0] for p in subset])
        vals = np.array(list(itertools.product(range(levels), repeat=sc.size)))
        x = np.broadcast_to(x0, (vals.shape[0], x0.size)).copy()
        x[:, sc] = case.lo[sc] + grid_1d[vals] * (case.hi[sc] - case.lo[sc])
        z = ort_logits(case, x).astype(np.float64)
        diff = z[:, [ref]] - z
        mins = diff.min(axis=0)
        best = mins if best is None else np.minimum(best, mins)
        m = margin_of(z, ref)
        i = int(np.argmin(m))
        if m[i] < best_m:
            best_m, best_x = m[i], x[i]
    assert best is not None
    best[ref] = np.inf
    return best, best_x


# ----------------------------------------------------------------------------------------------
# the oracles checked against brute force


def test_milp_oracle_matches_brute_force() -> None:
    from l0tre_core.certify import Network

    for seed in range(3):
        case = build_mlp(seed, n_pixels=4, hidden=(6,), k=3)
        net = Network.from_onnx(case.model, "x", "y", case.sample_shape)
        rng = np.random.default_rng(seed)
        x0 = rng.uniform(0, 1, case.d)
        ref = int(np.argmax(ort_logits(case, x0[None])[0]))
        for t in (1, 2):
            grid, _ = grid_min_margins(case, x0, ref, t, levels=41)
            exact, points = exact_min_margins(net, case, x0, ref, t)
            for k in range(3):
                if k == ref:
                    continue
                v, x = milp_min_margin(net, case, x0, ref, k, t)
                assert changed_pixels(case, x, x0) <= t
                # the MILP points are in the set, so the grid cannot go much below them
                assert v <= grid[k] + 1e-6
                assert exact[k] <= grid[k] + 1e-6
                assert grid[k] <= v + 0.05  # a fine grid comes close to the true minimum
                assert abs(exact[k] - v) <= 1e-5  # two MILP formulations agree
                assert changed_pixels(case, points[k], x0) <= t


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
