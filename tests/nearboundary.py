"""Random *near-boundary* tiny ONNX classifiers, for the soundness harness.

Each network is written with ``onnx.helper`` (float32 initialisers, opset 17, or 9 for the
BatchNormalization-on-constants family) and, alongside, as float64 NumPy weights (an
``oracle.Net``) computed from exactly the float32 values stored in the file, so that the oracle can
solve MILPs without ever parsing ONNX.

Inputs: 1x4x4 and 3x4x4 (NCHW), 4x4x1 and 4x4x3 (NHWC), flat 16; valid ranges [0, 1], [-1, 1],
[0, 255]; normalisation inside the graph (Sub/Div) or outside (mean/std given to l0tre).
Operators: Gemm, MatMul+Add, Conv (strides, pads), Relu, LeakyRelu, Sigmoid, Tanh, MaxPool,
AveragePool, BatchNormalization (inference form), Clip, Flatten/Reshape/Transpose, a residual Add
of two branches, Concat, Cast to FLOAT16 and back, a final Softmax or Sigmoid; logits or
probabilities.

Adversarial by construction: occasional large single weights, hidden pre-activations centred on the
clean input (many unstable ReLUs), logits offset by a large constant (1024), and above all tiny
margins: after a network is built and a clean input picked, the float64 minimum of
``z_ref - z_k`` over the t = 1 (sometimes t = 2) L0 set is computed (exact MILP, or a dense grid
for smooth networks) and the output biases are shifted so that the minimum becomes ``delta`` for
``delta`` in ``DELTAS`` times the logit scale: exactly where a float32 evaluation and a float64
proof disagree. Everything follows from ``(family, seed)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from oracle import Net, Node, Oracle, channel_ids, exact_min_margins, unit_ids

TUNE_MILP_SECONDS = 1.0  # per MILP while tuning: its incumbent is near-optimal long before it is proven
DELTAS = (-1e-4, -1e-7, 0.0, 1e-9, 1e-7, 1e-6, 1e-4, 1e-2)
RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))
INPUTS = ("nchw1", "nchw3", "nhwc1", "nhwc3", "flat16")

# family -> what it stresses. The last four are the known weak spots of float64 certificates
# against float32 runtimes.
FAMILIES = {
    "mlp": "Gemm or MatMul+Add, ReLU/LeakyReLU/Clip, flat or image inputs",
    "cnn": "Conv (stride, pad), BatchNormalization, MaxPool/AveragePool, Flatten/Reshape, Softmax",
    "residual": "two Conv branches, residual Add, Concat, Transpose (NHWC)",
    "smooth": "Sigmoid/Tanh hidden layers (grid oracle only)",
    "feature": "3-channel CNN under unit=feature (single scalars change)",
    "logits1024": "a constant 1024 added to every logit, tiny margins",
    "sigmoid_out": "a final Sigmoid over huge logits (float32 saturation ties)",
    "fp16": "a Cast to FLOAT16 and back inside the graph",
    "bn9": "opset 9, a BatchNormalization on constants (epsilon != 1e-5) added to a layer",
    "stem": "Conv, ReLU, MaxPool, Conv, ReLU in a chain before the dense head (the stem's convolution step)",
}


# ----------------------------------------------------------------------------------------------
# NumPy versions of the linear operators (batched, per-sample shapes after the batch axis)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    b, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((b, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def avgpool(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    b, c, h, wd = x.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((b, c, ho, wo))
    for i in range(k):
        for j in range(k):
            out += x[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
    return out / (k * k)


def maxpool_index(c: int, h: int, w: int, k: int, stride: int, pad: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    idx = np.full((c * ho * wo, k * k), -1, np.int64)
    for ch in range(c):
        for oy in range(ho):
            for ox in range(wo):
                r = ch * ho * wo + oy * wo + ox
                for i in range(k):
                    for j in range(k):
                        y, xx = oy * stride - pad + i, ox * stride - pad + j
                        if 0 <= y < h and 0 <= xx < w:
                            idx[r, i * k + j] = ch * h * w + y * w + xx
    # padding never first: sort the -1 entries last
    idx = -np.sort(-idx, axis=1)
    return idx, (c, ho, wo)


# ----------------------------------------------------------------------------------------------
# the builder: one ONNX graph and its float64 twin


@dataclass
class _Expr:
    """An affine expression of materialised nodes: ``sum_p terms[p] @ v_p + bias``, per-sample shape."""

    terms: dict[int, np.ndarray | None]
    bias: np.ndarray
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class Builder:
    def __init__(self, rng: np.random.Generator, opset: int, anchor: np.ndarray | None) -> None:
        self.rng = rng
        self.opset = opset
        self.onnx_nodes: list[Any] = []
        self.inits: list[Any] = []
        self.nodes: list[Node] = []
        self.vals: dict[str, _Expr] = {}
        self.anchor_vals: list[np.ndarray] = []
        self.anchor = anchor  # model-space clean input, for centring pre-activations
        self.n = 0

    # names and constants
    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr: Any, base: str = "c", dtype: Any = np.float32) -> tuple[str, np.ndarray]:
        nm = self.name(base)
        a = np.asarray(arr, dtype=dtype)
        self.inits.append(numpy_helper.from_array(a, nm))
        return nm, a.astype(np.float64)

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.onnx_nodes.append(helper.make_node(op, inputs, [out], name=self.name("n_" + op), **attrs))
        return out

    # the float64 twin
    def input(self, name: str, shape: tuple[int, ...]) -> str:
        d = int(np.prod(shape))
        self.nodes.append(Node("input", [], d))
        self.anchor_vals.append(np.zeros(d) if self.anchor is None else self.anchor.reshape(-1).astype(np.float64))
        self.vals[name] = _Expr({0: None}, np.zeros(d), tuple(shape))
        return name

    def value_at_anchor(self, e: _Expr) -> np.ndarray:
        v = e.bias.copy()
        for p, m in e.terms.items():
            v = v + (self.anchor_vals[p] if m is None else m @ self.anchor_vals[p])
        return v

    def linear(self, x: str, out: str, f: Any, out_shape: tuple[int, ...], const: np.ndarray | float = 0.0) -> str:
        """Record ``out = f(x) + const`` for a linear ``f`` on batched per-sample arrays."""
        e = self.vals[x]
        terms: dict[int, np.ndarray | None] = {}
        for p, m in e.terms.items():
            n_p = self.nodes[p].size
            basis = np.eye(n_p) if m is None else m.T  # [n_p, size]
            terms[p] = f(basis.reshape((n_p,) + e.shape)).reshape(n_p, -1).T
        bias = f(e.bias.reshape((1,) + e.shape)).reshape(-1) + np.broadcast_to(np.asarray(const, np.float64), out_shape).reshape(-1)
        self.vals[out] = _Expr(terms, bias, tuple(out_shape))
        return out

    def materialise(self, x: str) -> int:
        e = self.vals[x]
        if len(e.terms) == 1:
            (p, m), = e.terms.items()
            if m is None and p != 0 and not np.any(e.bias):
                return p
        parents = sorted(e.terms)
        self.nodes.append(Node("affine", parents, e.size, mats=[e.terms[p] for p in parents], bias=e.bias.copy()))
        self.anchor_vals.append(self.value_at_anchor(e))
        return len(self.nodes) - 1

    def nonlinear(self, x: str, out: str, kind: str, shape: tuple[int, ...] | None = None, **kw: Any) -> str:
        p = self.materialise(x)
        e = self.vals[x]
        shape = e.shape if shape is None else tuple(shape)
        nd = Node(kind, [p], int(np.prod(shape)), **kw)
        self.nodes.append(nd)
        v = self.anchor_vals[p]
        if kind == "relu":
            v = np.maximum(v, 0)
        elif kind == "leaky":
            v = np.where(v >= 0, v, nd.alpha * v)
        elif kind == "clip":
            v = np.clip(v, nd.lo, nd.hi)
        elif kind == "sigmoid":
            v = 0.5 * (1 + np.tanh(0.5 * v))
        elif kind == "tanh":
            v = np.tanh(v)
        elif kind == "maxpool":
            v = np.where(nd.pool_idx >= 0, v[np.maximum(nd.pool_idx, 0)], -np.inf).max(-1)
        self.anchor_vals.append(v)
        self.vals[out] = _Expr({len(self.nodes) - 1: None}, np.zeros(nd.size), shape)
        return out

    # ONNX operators with their twins ----------------------------------------------------------
    def gemm(self, x: str, n_out: int, *, gain: float = 1.5, center: bool = False, big: bool = False,
             matmul: bool = False, bias_shift: np.ndarray | None = None, bias_name: str = "b") -> str:
        e = self.vals[x]
        assert len(e.shape) == 1
        n_in = e.shape[0]
        w = self.rng.normal(0, gain / np.sqrt(n_in), (n_out, n_in))
        w -= w.mean(axis=1, keepdims=True) * 0.5  # decisions follow patterns more than brightness
        if big:
            i, j = self.rng.integers(0, n_out), self.rng.integers(0, n_in)
            w[i, j] *= self.rng.choice([20.0, -30.0, 50.0])
        w32 = w.astype(np.float32).astype(np.float64)
        b = self.rng.normal(0, 0.3, n_out)
        if center:  # about half the units start at their kink on the clean input
            pre = self.value_at_anchor(e) @ w32.T
            pick = self.rng.uniform(size=n_out) < 0.5
            b = np.where(pick, -pre + self.rng.normal(0, 0.02, n_out), b)
        if bias_shift is not None:
            b = b + bias_shift
        if matmul:
            wn, wv = self.const(w.T, "w")
            bn, bv = self.const(b, bias_name)
            mm = self.node("MatMul", [x, wn])
            self.linear(x, mm, lambda v: v @ wv, (n_out,))
            out = self.node("Add", [mm, bn])
            return self.linear(mm, out, lambda v: v, (n_out,), bv)
        wn, wv = self.const(w, "w")
        bn, bv = self.const(b, bias_name)
        out = self.node("Gemm", [x, wn, bn], transB=1)
        return self.linear(x, out, lambda v: v @ wv.T, (n_out,), bv)

    def conv(self, x: str, n_out: int, k: int, stride: int, pad: int, *, gain: float = 1.5, center: bool = False,
             big: bool = False) -> str:
        c, h, w_ = self.vals[x].shape
        w = self.rng.normal(0, gain / np.sqrt(c * k * k), (n_out, c, k, k))
        if big:
            w[tuple(self.rng.integers(0, s) for s in w.shape)] *= self.rng.choice([20.0, -30.0])
        wn, wv = self.const(w, "cw")
        ho, wo = (h + 2 * pad - k) // stride + 1, (w_ + 2 * pad - k) // stride + 1
        b = self.rng.normal(0, 0.3, n_out)
        if center:
            pre = conv2d(self.value_at_anchor(self.vals[x]).reshape(1, c, h, w_), wv, stride, pad)[0]
            b = -pre.mean(axis=(1, 2)) + self.rng.normal(0, 0.02, n_out)
        bn, bv = self.const(b, "cb")
        out = self.node("Conv", [x, wn, bn], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        return self.linear(x, out, lambda v: conv2d(v, wv, stride, pad), (n_out, ho, wo),
                           np.broadcast_to(bv[:, None, None], (n_out, ho, wo)))

    def batchnorm(self, x: str) -> str:
        c = self.vals[x].shape[0]
        rest = self.vals[x].shape[1:]
        sn, s = self.const(self.rng.uniform(0.5, 2.0, c), "bns")
        bn, b = self.const(self.rng.normal(0, 0.3, c), "bnb")
        mn, m = self.const(self.rng.normal(0, 0.3, c), "bnm")
        vn, v = self.const(self.rng.uniform(0.3, 2.0, c), "bnv")
        eps = float(np.float32(1e-3))
        out = self.node("BatchNormalization", [x, sn, bn, mn, vn], epsilon=eps)
        a = s / np.sqrt(v + eps)
        shp = (1, c) + (1,) * len(rest)
        return self.linear(x, out, lambda t: t * a.reshape(shp), self.vals[x].shape,
                           np.broadcast_to((b - a * m).reshape((c,) + (1,) * len(rest)), self.vals[x].shape))

    def act(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.nonlinear(x, self.node("Relu", [x]), "relu")
        if kind == "leaky":
            alpha = float(self.rng.choice([0.1, 0.01, 0.2]))
            return self.nonlinear(x, self.node("LeakyRelu", [x], alpha=alpha), "leaky", alpha=float(np.float32(alpha)))
        if kind == "clip":
            lo, hi = [(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)][int(self.rng.integers(0, 3))]
            ln, lv = self.const(np.array(lo), "clo")
            hn, hv = self.const(np.array(hi), "chi")
            return self.nonlinear(x, self.node("Clip", [x, ln, hn]), "clip", lo=float(lv), hi=float(hv))
        if kind == "sigmoid":
            return self.nonlinear(x, self.node("Sigmoid", [x]), "sigmoid")
        if kind == "tanh":
            return self.nonlinear(x, self.node("Tanh", [x]), "tanh")
        raise ValueError(kind)

    def cast16(self, x: str) -> str:
        h = self.node("Cast", [x], to=TensorProto.FLOAT16)
        out = self.node("Cast", [h], to=TensorProto.FLOAT)
        return self.nonlinear(x, out, "cast16")

    def maxpool(self, x: str, k: int, stride: int, pad: int) -> str:
        c, h, w = self.vals[x].shape
        idx, shape = maxpool_index(c, h, w, k, stride, pad)
        out = self.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        return self.nonlinear(x, out, "maxpool", pool_idx=idx, shape=shape)

    def avgpool(self, x: str, k: int, stride: int) -> str:
        c, h, w = self.vals[x].shape
        out = self.node("AveragePool", [x], kernel_shape=[k, k], strides=[stride, stride])
        return self.linear(x, out, lambda v: avgpool(v, k, stride), (c, (h - k) // stride + 1, (w - k) // stride + 1))

    def flatten(self, x: str, reshape: bool = False) -> str:
        e = self.vals[x]
        if reshape:
            sn, _ = self.const(np.array([-1, e.size]), "shape", np.int64)
            out = self.node("Reshape", [x, sn])
        else:
            out = self.node("Flatten", [x], axis=1)
        return self.linear(x, out, lambda v: v.reshape(v.shape[0], -1), (e.size,))

    def transpose(self, x: str, perm: list[int]) -> str:
        e = self.vals[x]
        out = self.node("Transpose", [x], perm=perm)
        inner = [p - 1 for p in perm[1:]]
        return self.linear(x, out, lambda v: np.transpose(v, [0] + [p + 1 for p in inner]), tuple(e.shape[p] for p in inner))

    def sub_div(self, x: str, mean: np.ndarray, std: np.ndarray) -> str:
        """(x - mean) / std with per-channel constants broadcast over a [C, H, W] or [D] sample."""
        e = self.vals[x]
        shp = (1, len(mean), 1, 1) if len(e.shape) == 3 else (1, len(mean))
        mn, mv = self.const(np.asarray(mean).reshape(shp), "mean")
        sn, sv = self.const(np.asarray(std).reshape(shp), "std")
        a = self.node("Sub", [x, mn])
        self.linear(x, a, lambda v: v, e.shape, np.broadcast_to(-mv[0], e.shape))
        out = self.node("Div", [a, sn])
        return self.linear(a, out, lambda v: v / sv, e.shape)

    def add(self, a: str, b: str) -> str:
        ea, eb = self.vals[a], self.vals[b]
        assert ea.shape == eb.shape
        out = self.node("Add", [a, b])
        terms: dict[int, np.ndarray | None] = {}
        for p in set(ea.terms) | set(eb.terms):
            n_p = self.nodes[p].size
            mats = [e.terms[p] for e in (ea, eb) if p in e.terms]
            mats = [np.eye(n_p) if m is None else m for m in mats]
            terms[p] = sum(mats[1:], mats[0])
        self.vals[out] = _Expr(terms, ea.bias + eb.bias, ea.shape)
        return out

    def concat(self, a: str, b: str) -> str:
        ea, eb = self.vals[a], self.vals[b]
        assert ea.shape[1:] == eb.shape[1:]
        out = self.node("Concat", [a, b], axis=1)
        terms: dict[int, np.ndarray | None] = {}
        for p in set(ea.terms) | set(eb.terms):
            n_p = self.nodes[p].size
            blocks = []
            for e in (ea, eb):
                if p not in e.terms:
                    blocks.append(np.zeros((e.size, n_p)))
                else:
                    m = e.terms[p]
                    blocks.append(np.eye(n_p) if m is None else m)
            terms[p] = np.vstack(blocks)
        self.vals[out] = _Expr(terms, np.concatenate([ea.bias, eb.bias]), (ea.shape[0] + eb.shape[0],) + ea.shape[1:])
        return out

    def bn_const_bias(self, x: str, eps: float) -> str:
        """``x + BatchNormalization(C)`` for a constant C (folded by whoever reads the graph)."""
        n = self.vals[x].shape[0]
        cn, c = self.const(self.rng.normal(0, 1.0, (1, n)), "bnx")
        sn, s = self.const(self.rng.uniform(0.5, 2.0, n), "bns")
        bn, b = self.const(self.rng.normal(0, 0.3, n), "bnb")
        mn, m = self.const(self.rng.normal(0, 0.5, n), "bnm")
        vn, v = self.const(self.rng.uniform(0.02, 0.2, n), "bnv")
        eps32 = float(np.float32(eps))
        y = self.node("BatchNormalization", [cn, sn, bn, mn, vn], epsilon=eps32)
        val = s * (c[0] - m) / np.sqrt(v + eps32) + b
        out = self.node("Add", [x, y])
        return self.linear(x, out, lambda t: t, (n,), val)

    def model(self, x_name: str, x_shape: list[Any], y: str, k: int, final: str | None, metadata: dict[str, Any]) -> tuple[onnx.ModelProto, Net]:
        out_node = self.materialise_output(y)
        last = y
        if final == "softmax":
            last = self.node("Softmax", [y], axis=1)
        elif final == "sigmoid":
            last = self.node("Sigmoid", [y])
        self.onnx_nodes.append(helper.make_node("Identity", [last], ["y"], name=self.name("n_out")))
        g = helper.make_graph(self.onnx_nodes, "nearboundary", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="l0tre-nearboundary")
        m.ir_version = 8
        for key, value in metadata.items():
            entry = m.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(m, full_check=True)
        return m, Net(list(self.nodes), out_node, final)

    def materialise_output(self, y: str) -> int:
        e = self.vals[y]
        parents = sorted(e.terms)
        self.nodes.append(Node("affine", parents, e.size, mats=[np.eye(self.nodes[p].size) if e.terms[p] is None else e.terms[p] for p in parents],
                               bias=e.bias.copy()))
        self.anchor_vals.append(self.value_at_anchor(e))
        return len(self.nodes) - 1


# ----------------------------------------------------------------------------------------------
# specs: every random decision about one network, drawn from (family, seed)


@dataclass
class Spec:
    family: str
    seed: int
    inp: str
    range: tuple[float, float]
    norm: str  # none | inside | outside
    mean: list[float] | None
    std: list[float] | None
    opset: int
    classes: int
    acts: list[str]
    final: str | None
    offset: float
    output: str  # card output kind
    unit: str
    t_tune: int  # the L0 level whose float64 minimum margin is tuned
    delta: float  # relative to the logit scale
    shift_all: bool  # shift every competing class (else only the nearest)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return "flat" if self.inp == "flat16" else self.inp[:4]

    @property
    def channels(self) -> int:
        return 3 if self.inp.endswith("3") else 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        c = self.channels
        return {"nchw": (c, 4, 4), "nhwc": (4, 4, c), "flat": (16,)}[self.layout]

    def describe(self) -> str:
        o = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return (f"{self.family}#{self.seed} {self.inp} range={list(self.range)} norm={self.norm} opset={self.opset} "
                f"acts={self.acts} final={self.final} offset={self.offset:g} out={self.output} unit={self.unit} "
                f"tuned t={self.t_tune} delta={self.delta:g}{' all' if self.shift_all else ''} {o}")


def draw_spec(family: str, seed: int) -> Spec:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    rng = np.random.default_rng([seed, 11, sorted(FAMILIES).index(family)])
    pick = lambda seq: seq[int(rng.integers(0, len(seq)))]  # noqa: E731
    inp = pick(INPUTS)
    rng_range = pick(RANGES)
    norm = pick(["none", "inside", "outside"])
    acts = [pick(["relu", "leaky", "relu", "clip"]) for _ in range(2)]
    final = pick([None, None, "softmax"])
    offset = 0.0
    output = "logits"
    unit = "pixel"
    opset = 17
    options: dict[str, Any] = {
        "big": bool(rng.uniform() < 0.3),
        "center": bool(rng.uniform() < 0.4),
        "matmul": bool(rng.uniform() < 0.4),
        "reshape": bool(rng.uniform() < 0.5),
        "hidden": int(pick([6, 8, 12])),
    }
    if family == "mlp":
        options["layers"] = int(pick([1, 2]))
    elif family == "cnn":
        inp = pick(["nchw1", "nchw3", "nhwc1", "nhwc3"])
        options.update(k=int(pick([2, 3])), stride=int(pick([1, 2])), pad=int(pick([0, 1])), filters=int(pick([2, 3, 4])),
                       bn=bool(rng.uniform() < 0.5), pool=pick([None, "max", "avg"]), pool_pad=int(pick([0, 1])))
    elif family == "residual":
        inp = pick(["nchw3", "nhwc3", "nhwc1", "nchw1"])
        options.update(filters=int(pick([2, 3])))
    elif family == "smooth":
        acts = [pick(["sigmoid", "tanh"]), pick(["sigmoid", "tanh", "relu"])]
        options["layers"] = 1
    elif family == "feature":
        inp = pick(["nchw3", "nhwc3"])
        unit = "feature"
        options.update(k=3, stride=2, pad=1, filters=2, bn=False, pool=None, pool_pad=0)
    elif family == "stem":
        inp = pick(["nchw1", "nchw3"])  # (a layout or a normalisation in the graph folds the first layer)
        norm = pick(["none", "outside"])
        acts = ["relu", "relu"]
        options.update(filters=int(pick([2, 3])), filters2=int(pick([2, 3])))
    elif family == "logits1024":
        offset = 1024.0
        options["layers"] = int(pick([1, 2]))
    elif family == "sigmoid_out":
        final = "sigmoid"
        offset = float(pick([0.0, 12.0, 16.0, 18.0]))
        options["gain_out"] = float(pick([8.0, 20.0, 40.0]))
        options["layers"] = 1
    elif family == "fp16":
        options["cast_at"] = pick(["hidden", "logits", "input"])
        options["layers"] = 1
    elif family == "bn9":
        opset = 9
        acts = [pick(["relu", "leaky"]) for _ in range(2)]
        options["bn_eps"] = float(pick([0.05, 0.1, 0.01]))
        options["layers"] = 1
        options["matmul"] = False
    if final == "softmax":
        output = "probs"
    elif final == "sigmoid":
        output = pick(["logits", "probs"])
    if opset == 9 and "clip" in acts:
        acts = ["relu" if a == "clip" else a for a in acts]
    c = 3 if inp.endswith("3") else 1
    mean = std = None
    if norm != "none":
        lo, hi = rng_range
        mean = [float(np.float32(lo + (hi - lo) * rng.uniform(0.2, 0.6))) for _ in range(c)]
        std = [float(np.float32((hi - lo) * rng.uniform(0.15, 0.4))) for _ in range(c)]
    n_units = 16 * (c if unit == "feature" else 1)
    t_tune = 2 if (rng.uniform() < 0.25 and n_units <= 16 and c == 1 and family != "smooth") else 1
    delta = float(pick(DELTAS))
    return Spec(family, seed, inp, rng_range, norm, mean, std, opset, int(pick([3, 3, 4])), acts, final, offset, output,
                unit, t_tune, delta, bool(rng.uniform() < 0.5), options)


# ----------------------------------------------------------------------------------------------
# building one network


def _body(b: Builder, spec: Spec, x: str, bias_shift: np.ndarray | None) -> str:
    o = spec.options
    fam = spec.family
    k = spec.classes
    acts = spec.acts
    if spec.layout in ("nchw", "nhwc") and fam in ("cnn", "residual", "feature", "stem"):
        if fam == "stem":  # 4x4 -> conv 4x4 -> max-pool 2x2 -> conv 2x2
            h = b.act(b.conv(x, o["filters"], 3, 1, 1, center=o["center"], big=o["big"]), "relu")
            h = b.maxpool(h, 2, 2, 0)
            h = b.act(b.conv(h, o["filters2"], 3, 1, 1), "relu")
        elif fam == "residual":
            f = o["filters"]
            h = b.act(b.conv(x, f, 3, 2, 1, center=o["center"], big=o["big"]), acts[0])  # [f, 2, 2]
            br = b.act(b.conv(h, f, 3, 1, 1), acts[1])
            h = b.add(h, br)  # the residual connection
            side = b.conv(x, 1, 2, 2, 0)  # [1, 2, 2]
            h = b.act(b.concat(h, side), "relu")
            if o["big"]:
                h = b.maxpool(h, 2, 1, 0)
        else:
            h = b.conv(x, o["filters"], o["k"], o["stride"], o["pad"], center=o["center"], big=o["big"])
            if o["bn"]:
                h = b.batchnorm(h)
            h = b.act(h, acts[0])
            sp = b.vals[h].shape[1]
            if o["pool"] == "max" and sp >= 2:
                h = b.maxpool(h, 2, 1 if sp <= 2 else 2, o["pool_pad"] if sp > 2 else 0)
            elif o["pool"] == "avg" and sp >= 2:
                h = b.avgpool(h, 2, 1)
        h = b.flatten(h, o["reshape"])
        h = b.act(b.gemm(h, o["hidden"], matmul=o["matmul"]), acts[1])
    else:
        h = x if len(b.vals[x].shape) == 1 else b.flatten(x, o["reshape"])
        if fam == "fp16" and o["cast_at"] == "input":
            h = b.cast16(h)
        for layer in range(o.get("layers", 1)):
            h = b.gemm(h, o["hidden"], center=o["center"] and layer == 0, big=o["big"] and layer == 0, matmul=o["matmul"])
            if fam == "bn9" and layer == 0:
                h = b.bn_const_bias(h, o["bn_eps"])
            h = b.act(h, acts[min(layer, len(acts) - 1)])
            if fam == "fp16" and o["cast_at"] == "hidden" and layer == 0:
                h = b.cast16(h)
    gain = o.get("gain_out", 1.5)
    z = b.gemm(h, k, gain=gain, matmul=o["matmul"], bias_shift=bias_shift, bias_name="out_b")
    if spec.offset:
        on, ov = b.const(np.full(k, spec.offset), "offset")
        out = b.node("Add", [z, on])
        z = b.linear(z, out, lambda v: v, (k,), ov)
    if fam == "fp16" and o["cast_at"] == "logits":
        z = b.cast16(z)
    return z


def build(spec: Spec, anchor_model: np.ndarray | None, bias_shift: np.ndarray | None = None) -> tuple[onnx.ModelProto, Net]:
    """The ONNX model and its float64 twin; deterministic in (spec, anchor, bias_shift)."""
    rng = np.random.default_rng([spec.seed, 23, sorted(FAMILIES).index(spec.family)])
    b = Builder(rng, spec.opset, anchor_model)
    shape = spec.sample_shape
    x = b.input("x", shape)
    h = x
    if spec.layout == "nhwc":
        h = b.transpose(h, [0, 3, 1, 2])
    if spec.norm == "inside":
        reps = 16 if spec.layout == "flat" else 1  # a flat input gets one constant per scalar
        h = b.sub_div(h, np.asarray(spec.mean * reps), np.asarray(spec.std * reps))
    z = _body(b, spec, h, bias_shift)
    meta = {"l0tre.description": spec.describe()}
    return b.model("x", ["N", *shape], z, spec.classes, spec.final, meta)


# ----------------------------------------------------------------------------------------------
# inputs, tuning, and what the harness gets


@dataclass
class Generated:
    spec: Spec
    path: Path
    net: Net  # float64, over the model input
    x: np.ndarray  # [n, *sample_shape] float32 data-space inputs; x[0] is the tuned anchor
    ref: int  # float64 class of the anchor (after tuning)
    tuned_ref: int  # the class whose margins were tuned (a negative delta may change the anchor's class)
    tuned_min: float  # float64 min margin over the tuned L0 set after the shift (+inf: untuned)
    scale: float

    @property
    def card(self) -> dict[str, Any]:
        s = self.spec
        card: dict[str, Any] = {"layout": s.layout, "range": list(s.range), "output": s.output}
        if s.norm == "outside":
            card["mean"], card["std"] = list(s.mean), list(s.std)  # type: ignore[arg-type]
        if s.layout == "flat":
            card["channels"] = 1
        return card

    @property
    def outside(self) -> tuple[list[float] | None, list[float] | None]:
        s = self.spec
        return (s.mean, s.std) if s.norm == "outside" else (None, None)

    def oracle(self, **kw: Any) -> Oracle:
        mean, std = self.outside
        s = self.spec
        slack = kw.pop("slack", None)
        if slack is None and s.family == "fp16":
            slack = 0.05 * self.scale  # float16 rounds activations to about 3 significant digits
        return Oracle(self.path, layout=s.layout, lo=s.range[0], hi=s.range[1], channels=1 if s.layout == "flat" else None,
                      mean=mean, std=std, unit=s.unit, net=self.net, slack=slack, **kw)

    def describe(self) -> str:
        return f"{self.spec.describe()} tuned_min={self.tuned_min:.3g} scale={self.scale:.3g} file={self.path}"


def _data_net(spec: Spec, net: Net) -> Net:
    if spec.norm != "outside":
        return net
    ch = _channel_of(spec)
    mean = np.asarray(spec.mean, np.float32)[ch].astype(np.float64)
    std = np.asarray(spec.std, np.float32)[ch].astype(np.float64)
    return net.with_input_affine(1.0 / std, -mean / std)


def _channel_of(spec: Spec) -> np.ndarray:
    return channel_ids(spec.layout, spec.sample_shape, 1)


def _to_model(spec: Spec, x: np.ndarray) -> np.ndarray:
    """Data space to what the graph input receives (float32, like l0tre and the oracle)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if spec.norm == "outside":
        ch = _channel_of(spec)
        x = (x - np.asarray(spec.mean, np.float32)[ch]) / np.asarray(spec.std, np.float32)[ch]
    return x


def draw_inputs(spec: Spec, n: int) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, 37, sorted(FAMILIES).index(spec.family)])
    lo, hi = spec.range
    shape = spec.sample_shape
    xs = rng.uniform(lo, hi, (n,) + shape)
    for i in range(n):
        if i % 2 == 1:  # saturated like real images
            mask = rng.uniform(size=shape) < 0.5
            xs[i] = np.where(mask, np.where(rng.uniform(size=shape) < 0.5, lo, hi), xs[i])
        if i % 3 == 2 and spec.range == (0.0, 255.0):
            xs[i] = np.round(xs[i])  # 8-bit values
    return xs.astype(np.float32)


def _pick_inputs(spec: Spec, dnet: Net, cand: np.ndarray, n: int) -> np.ndarray:
    """The anchor first; then, in turn, the candidate with the largest clean margin (the ones
    that get certificates at t = 2), and the anchor with one pixel pushed to a corner (near the
    tuned boundary)."""
    rng = np.random.default_rng([spec.seed, 41])
    z = dnet.forward(cand.reshape(len(cand), -1).astype(np.float64))
    zs = np.sort(z, axis=1)
    order = list(np.argsort(-(zs[:, -1] - zs[:, -2]) / (1e-9 + np.abs(z).max(axis=1))))
    order = [i for i in order if i != 0]
    out = [cand[0]]
    units = unit_ids(spec.layout, spec.sample_shape, 1, spec.unit)
    while len(out) < n:
        if len(out) % 2 == 1 or not order:
            out.append(cand[order.pop(0)])
        else:
            x = cand[0].reshape(-1).copy()
            u = rng.integers(0, units.max() + 1)
            x[units == u] = rng.choice(spec.range, size=int(np.sum(units == u)))
            out.append(x.reshape(cand[0].shape))
    return np.asarray(out, np.float32)


def generate(family: str, seed: int, folder: str | Path, *, n_inputs: int = 4, tune: bool = True,
             delta: float | None = None) -> Generated:
    """Build, pick inputs, tune the anchor's margin to ``delta`` times the logit scale (the
    spec's, unless given), save."""
    spec = draw_spec(family, seed)
    if delta is not None:
        spec = replace(spec, delta=float(delta))
    xs = draw_inputs(spec, 1 + 8 * max(0, n_inputs - 1))  # the anchor, and candidates for the others
    anchor_model = _to_model(spec, xs[:1])[0]
    model, net = build(spec, anchor_model)
    if spec.t_tune > 1 and sum(n.size for n in net.nodes if n.kind in ("relu", "leaky", "clip", "maxpool")) > 24:
        spec = replace(spec, t_tune=1)  # t = 2 tuning solves ~100 MILPs per class: small nets only
    dnet = _data_net(spec, net)
    x0 = xs[0].reshape(-1).astype(np.float64)
    z0 = dnet.forward(x0[None])[0]
    ref = tuned_ref = int(np.argmax(z0))
    scale = max(1.0, float(np.max(np.abs(z0))))
    tuned_min = np.inf
    if tune:
        units = unit_ids(spec.layout, spec.sample_shape, 1, spec.unit)
        lo, hi = spec.range
        smooth = not net.milp_ok
        mins, _ = exact_min_margins(dnet, x0, lo, hi, units, ref, spec.t_tune, exact=not smooth,
                                    grid_levels=33 if smooth else 5, milp_time=TUNE_MILP_SECONDS)
        target = spec.delta * scale
        shift = np.zeros(spec.classes)
        others = [k for k in range(spec.classes) if k != ref]
        nearest = min(others, key=lambda c: mins[c])
        for k in others:
            # every class (shift_all), or the nearest one and those already below the target
            if spec.shift_all or k == nearest or mins[k] < target:
                shift[k] = mins[k] - target
        # z_k moves by +shift[k]: its minimum margin becomes target (float32 bias rounding aside)
        model, net = build(spec, anchor_model, shift)
        dnet = _data_net(spec, net)
        z = dnet.forward(x0[None])[0]
        tuned_min = float(min(mins[k] - (shift[k] + 0.0) for k in others))
        ref = int(np.argmax(z))
    xs = _pick_inputs(spec, dnet, xs, n_inputs)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{family}_{seed}.onnx"
    onnx.save(model, str(path))
    return Generated(spec, path, net, xs, ref, tuned_ref, tuned_min, scale)


def spec_json(spec: Spec) -> str:
    return json.dumps(asdict(spec), default=float)
