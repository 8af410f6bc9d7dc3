"""The network as bound propagation sees it: a DAG of dense affine nodes and nonlinear nodes.

``Network.from_onnx`` walks the ONNX graph and composes every chain of affine operators (Gemm,
MatMul, Conv, BatchNormalization, pooling by averaging, Add/Sub/Mul/Div by constants, reshapes,
transposes, concatenations, normalisation in front of the network) into one matrix per parent, by
pushing an identity basis through a NumPy implementation of each operator. A convolution applied
directly to a node's values whose dense matrix would be large stays structured (``ConvOp``:
convolution forward, transposed convolution backward; a following per-channel scale such as a
folded BatchNormalization is absorbed into its kernel). What is left between the affine nodes are
the nonlinear nodes: Relu, LeakyRelu, Sigmoid, Tanh and MaxPool.

Not supported (``UnsupportedOperator`` names the operator and says why): any other operator; a
product or quotient of two input-dependent values; a Softmax/LogSoftmax anywhere but on the
output; reshapes, flattens, transposes or concatenations that move the batch axis; MaxPool's
Indices output; AveragePool with both ceil_mode and count_include_pad; training-mode
BatchNormalization; a composed affine layer whose dense matrix exceeds ``MAX_DENSE`` entries.

Node kinds:
- ``input``: the flattened per-sample model input (always node 0);
- ``linear``: ``y = sum_i W_i x_{parent_i} + b`` (``W_i`` dense ``[size, parent size]``, a
  ``ConvOp``, or None for the identity);
- ``relu``, ``leaky`` (slope ``alpha`` below 0), ``sigmoid``, ``tanh``: elementwise on one parent;
- ``maxpool``: ``y_j = max_k x[pool_idx[j, k]]`` (``-1`` marks padding, never the first column).
Every consumer of the input is a linear node, and the output node (the logits) is a linear node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from l0tre_core.certify import _ops
from l0tre_core.certify._types import UnsupportedOperator

NONLINEAR = ("relu", "leaky", "sigmoid", "tanh", "maxpool")
MAX_DENSE = 48_000_000  # entries of one dense matrix (384 MB in float64)
DENSE_CONV_MAX = 1_000_000  # a convolution with a larger dense matrix stays a ConvOp
_CHUNK_ELEMS = 4_000_000


@dataclass
class Node:
    kind: str
    parents: list[int]
    size: int
    name: str = ""
    shape: tuple[int, ...] = ()
    mats: list[np.ndarray | None] = field(default_factory=list)
    bias: np.ndarray | None = None
    alpha: float = 0.0
    pool_idx: np.ndarray | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def mat_abs(self, i: int) -> Any:
        """``|W_i|`` (None for the identity)."""
        key = f"abs{i}"
        if key not in self._cache:
            w = self.mats[i]
            self._cache[key] = None if w is None else (w.abs() if isinstance(w, ConvOp) else np.abs(w))
        return self._cache[key]


class ConvOp:
    """A convolution (no bias) as a linear map between flattened per-sample tensors, without
    forming its (mostly zero) dense matrix: ``apply`` is the convolution, ``back`` the transposed
    convolution. 1-D and 2-D kernels."""

    def __init__(self, w: np.ndarray, in_shape: tuple[int, ...], strides: list[int], pads: list[int],
                 dilations: list[int], group: int) -> None:
        n_sp = w.ndim - 2
        if n_sp == 1:  # as 2-D with a unit height
            w = w[:, :, None, :]
            in_shape = (in_shape[0], 1, in_shape[1])
            strides, dilations = [1, strides[0]], [1, dilations[0]]
            pads = [0, pads[0], 0, pads[1]]
        if w.ndim != 4:
            raise ValueError("ConvOp handles 1-D and 2-D kernels")
        self.w = np.ascontiguousarray(w, dtype=np.float64)
        self.in_shape = tuple(int(v) for v in in_shape)
        self.strides, self.pads, self.dilations, self.group = list(strides), list(pads), list(dilations), group
        probe = _ops.conv(np.zeros((1,) + self.in_shape), self.w, None, self.strides, self.pads, self.dilations, group)
        self.out_shape = tuple(probe.shape[1:])
        self.shape = (int(np.prod(self.out_shape)), int(np.prod(self.in_shape)))

    def abs(self) -> "ConvOp":
        return ConvOp(np.abs(self.w), self.in_shape, self.strides, self.pads, self.dilations, self.group)

    def scaled(self, c: np.ndarray) -> "ConvOp | None":
        """``diag(c) W`` when ``c`` is constant over each output channel, else None."""
        per = np.asarray(c, dtype=np.float64).reshape(self.out_shape[0], -1)
        if not np.all(per == per[:, :1]):
            return None
        w = self.w * per[:, 0].reshape(-1, 1, 1, 1)
        return ConvOp(w, self.in_shape, self.strides, self.pads, self.dilations, self.group)

    def apply(self, x: np.ndarray) -> np.ndarray:
        lead = x.shape[:-1]
        xs = x.reshape((-1,) + self.in_shape)
        out = np.empty((xs.shape[0], self.shape[0]))
        step = max(1, 4_000_000 // max(1, self.shape[1] * int(np.prod(self.w.shape[2:]))))
        for s in range(0, xs.shape[0], step):
            y = _ops.conv(xs[s : s + step], self.w, None, self.strides, self.pads, self.dilations, self.group)
            out[s : s + step] = y.reshape(y.shape[0], -1)
        return out.reshape(lead + (self.shape[0],))

    def back(self, a: np.ndarray) -> np.ndarray:
        """``a W``: the transposed convolution of ``a [..., Dout]``."""
        lead = a.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        a2 = a.reshape(n, self.shape[0])
        out = np.empty((n, self.shape[1]))
        kprod = int(np.prod(self.w.shape[1:]))
        step = max(1, 4_000_000 // max(1, self.shape[0] // self.out_shape[0] * kprod * self.group + self.shape[1]))
        for s in range(0, n, step):
            out[s : s + step] = self._back(a2[s : s + step])
        return out.reshape(lead + (self.shape[1],))

    def _back(self, a2: np.ndarray) -> np.ndarray:
        n = a2.shape[0]
        m, ho, wo = self.out_shape
        c, h, w_in = self.in_shape
        kh, kw = self.w.shape[2:]
        sh, sw = self.strides
        dh, dw = self.dilations
        pt, pl = self.pads[0], self.pads[1]
        g = self.group
        mg, cg = m // g, c // g
        a4 = a2.reshape(n, m, ho * wo)
        hp = max(h + pt + self.pads[2], (ho - 1) * sh + (kh - 1) * dh + 1)
        wp = max(w_in + pl + self.pads[3], (wo - 1) * sw + (kw - 1) * dw + 1)
        out = np.zeros((n, c, hp, wp))
        for gi in range(g):
            ag = np.ascontiguousarray(a4[:, gi * mg : (gi + 1) * mg, :].transpose(0, 2, 1)).reshape(n * ho * wo, mg)
            wg = self.w[gi * mg : (gi + 1) * mg].reshape(mg, cg * kh * kw)
            cols = (ag @ wg).reshape(n, ho, wo, cg, kh, kw)
            for ky in range(kh):
                ys = slice(ky * dh, ky * dh + (ho - 1) * sh + 1, sh)
                for kx in range(kw):
                    xs = slice(kx * dw, kx * dw + (wo - 1) * sw + 1, sw)
                    out[:, gi * cg : (gi + 1) * cg, ys, xs] += cols[:, :, :, :, ky, kx].transpose(0, 3, 1, 2)
        return out[:, :, pt : pt + h, pl : pl + w_in].reshape(n, -1)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense rows ``W[idx]``, written straight from the kernel."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        m_all, ho, wo = self.out_shape
        c, h, w_in = self.in_shape
        mg = m_all // self.group
        cg, kh, kw = self.w.shape[1:]
        m, rem = np.divmod(idx, ho * wo)
        oy, ox = np.divmod(rem, wo)
        cl, ky, kx = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
        cl, ky, kx = cl.reshape(-1), ky.reshape(-1), kx.reshape(-1)
        iy = oy[:, None] * self.strides[0] + ky[None, :] * self.dilations[0] - self.pads[0]
        ix = ox[:, None] * self.strides[1] + kx[None, :] * self.dilations[1] - self.pads[1]
        ch = (m // mg)[:, None] * cg + cl[None, :]
        ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w_in)
        vals = self.w[m[:, None], cl[None, :], ky[None, :], kx[None, :]]
        out = np.zeros((idx.size, self.shape[1]))
        r = np.broadcast_to(np.arange(idx.size)[:, None], ok.shape)
        out[r[ok], (ch * h * w_in + iy * w_in + ix)[ok]] = vals[ok]
        return out

    def cols(self, idx: np.ndarray) -> np.ndarray:
        """``W[:, idx]`` for an index array of any shape: ``[Dout, *idx.shape]``."""
        uniq, inv = np.unique(idx, return_inverse=True)
        e = np.zeros((uniq.size, self.shape[1]))
        e[np.arange(uniq.size), uniq] = 1.0
        colsu = self.apply(e).T  # [Dout, U]
        return colsu[:, inv.reshape(idx.shape)]

    def dense(self) -> np.ndarray:
        return self.apply(np.eye(self.shape[1])).T


def as_dense(w: Any) -> np.ndarray | None:
    return w.dense() if isinstance(w, ConvOp) else w


def apply_mat(x: np.ndarray, w: Any) -> np.ndarray:
    """``x [..., Din] -> [..., Dout]`` for ``y = W x`` (one 2-D product: stacked small products
    would not use BLAS well)."""
    if w is None:
        return x
    if isinstance(w, ConvOp):
        return w.apply(x)
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(lead + (w.shape[0],))


def back_mat(a: np.ndarray, w: Any) -> np.ndarray:
    """``a [..., Dout] -> a W [..., Din]``."""
    if w is None:
        return a
    if isinstance(w, ConvOp):
        return w.back(a)
    lead = a.shape[:-1]
    return (a.reshape(-1, a.shape[-1]) @ w).reshape(lead + (w.shape[1],))


def rows_of(w: Any, idx: np.ndarray, n_in: int) -> np.ndarray:
    """Dense rows ``W[idx]``."""
    if w is None:
        m = np.zeros((idx.size, n_in))
        m[np.arange(idx.size), idx] = 1.0
        return m
    if isinstance(w, ConvOp):
        return w.rows(idx)
    return w[idx]


def cols_of(w: Any, idx: np.ndarray) -> np.ndarray:
    """``W[:, idx]`` -> ``[Dout, *idx.shape]`` (w not None)."""
    if isinstance(w, ConvOp):
        return w.cols(idx)
    return w[:, idx]


def pool_values(x: np.ndarray, node: Node, fill: float) -> np.ndarray:
    """``x [..., Din] -> [..., Dout, K]`` the window values (padding replaced by ``fill``)."""
    idx = node.pool_idx
    assert idx is not None
    vals = x[..., np.where(idx < 0, 0, idx)]
    if (idx < 0).any():
        vals = np.where(idx < 0, fill, vals)
    return vals


def eval_nonlinear(node: Node, z: np.ndarray) -> np.ndarray:
    if node.kind == "relu":
        return np.maximum(z, 0.0)
    if node.kind == "leaky":
        return np.where(z >= 0, z, node.alpha * z)
    if node.kind == "sigmoid":
        return _ops.sigmoid(z)
    if node.kind == "tanh":
        return np.tanh(z)
    if node.kind == "maxpool":
        return pool_values(z, node, -np.inf).max(axis=-1)
    raise AssertionError(node.kind)


class Network:
    """A classifier graph prepared for bound propagation (built once per model)."""

    def __init__(self, nodes: list[Node], sample_shape: tuple[int, ...]) -> None:
        self.nodes = nodes
        self.sample_shape = tuple(sample_shape)
        self.output = len(nodes) - 1
        self.n_inputs = nodes[0].size
        self.n_outputs = nodes[-1].size
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for j, nd in enumerate(nodes):
            for p in nd.parents:
                self.consumers[p].append(j)
        self.last_use = [max(c) if c else j for j, c in enumerate(self.consumers)]

    @classmethod
    def from_onnx(
        cls, model: Any, input_name: str, output_name: str, sample_shape: tuple[int, ...]
    ) -> "Network":
        return _Importer(model, input_name, output_name, tuple(int(s) for s in sample_shape)).build()

    def __repr__(self) -> str:
        parts = [f"{n.kind}[{n.size}]" for n in self.nodes]
        return f"Network({' -> '.join(parts)})"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``[B, D]`` model-space inputs -> ``[B, K]`` outputs (a final Softmax dropped)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.n_inputs)
        out = np.empty((x.shape[0], self.n_outputs))
        step = 2048
        for s in range(0, x.shape[0], step):
            out[s : s + step] = self._forward_chunk(x[s : s + step])
        return out

    def _forward_chunk(self, x: np.ndarray) -> np.ndarray:
        vals: dict[int, np.ndarray] = {0: x}
        for j in range(1, len(self.nodes)):
            nd = self.nodes[j]
            if nd.kind == "linear":
                acc = np.broadcast_to(nd.bias, (x.shape[0], nd.size)).copy()
                for p, w in zip(nd.parents, nd.mats):
                    acc += apply_mat(vals[p], w)
                vals[j] = acc
            else:
                vals[j] = eval_nonlinear(nd, vals[nd.parents[0]])
            for p in nd.parents:
                if self.last_use[p] == j:
                    del vals[p]
        return vals[len(self.nodes) - 1]


# ----------------------------------------------------------------------------------------------
# ONNX import


class _Sym:
    """A value that depends on the input: ``sum_n W_n v_n + bias`` over already built nodes."""

    __slots__ = ("terms", "bias", "shape")

    def __init__(self, terms: dict[int, np.ndarray | None], bias: np.ndarray, shape: tuple[int, ...]) -> None:
        self.terms = terms
        self.bias = np.asarray(bias, dtype=np.float64).reshape(shape)
        self.shape = tuple(int(s) for s in shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Final:
    """The output of a Softmax: may only be the graph output."""

    def __init__(self, sym: _Sym, op: str, name: str) -> None:
        self.sym, self.op, self.name = sym, op, name


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


class _Importer:
    def __init__(self, model: Any, input_name: str, output_name: str, sample_shape: tuple[int, ...]) -> None:
        self.model = model
        self.graph = model.graph
        self.input_name = input_name
        self.output_name = output_name
        self.sample_shape = sample_shape
        self.opset = 13
        for imp in getattr(model, "opset_import", []):
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.syms: dict[str, Any] = {}
        self.cur_op = ""
        self.cur_name = ""

    # -- errors ---------------------------------------------------------------------------------
    def unsupported(self, reason: str = "") -> UnsupportedOperator:
        return UnsupportedOperator(self.cur_op, self.cur_name, reason)

    # -- building -----------------------------------------------------------------------------
    def build(self) -> Network:
        from onnx import numpy_helper

        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        d = int(np.prod(self.sample_shape, dtype=np.int64))
        self.nodes.append(Node("input", [], d, name=self.input_name, shape=self.sample_shape))
        self.syms[self.input_name] = _Sym({0: None}, np.zeros(self.sample_shape), self.sample_shape)
        self.consts.pop(self.input_name, None)

        needed = self._needed_nodes()
        for k, node in enumerate(self.graph.node):
            if k not in needed:
                continue
            self.cur_op = node.op_type
            self.cur_name = node.name or (node.output[0] if node.output else "?")
            self._visit(node)

        self.cur_op, self.cur_name = "output", self.output_name
        if self.output_name in self.consts:
            raise UnsupportedOperator("output", self.output_name, "the output does not depend on the input")
        if self.output_name not in self.syms:
            raise UnsupportedOperator("output", self.output_name, "the graph output is not computed by the graph")
        out = self.syms[self.output_name]
        if isinstance(out, _Final):
            out = out.sym
        out = _Sym(out.terms, out.bias.reshape(-1), (out.size,))
        self._materialize(out, force_new=True, name=self.output_name)
        return Network(self._prune(), self.sample_shape)

    def _needed_nodes(self) -> set[int]:
        producer: dict[str, int] = {}
        nodes = list(self.graph.node)
        for k, node in enumerate(nodes):
            for o in node.output:
                if o:
                    producer[o] = k
        needed: set[int] = set()
        stack = [self.output_name]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            k = producer[name]
            needed.add(k)
            stack.extend(i for i in nodes[k].input if i)
        return needed

    def _prune(self) -> list[Node]:
        keep = {len(self.nodes) - 1, 0}
        for j in range(len(self.nodes) - 1, -1, -1):
            if j in keep:
                keep.update(self.nodes[j].parents)
        order = sorted(keep)
        remap = {old: new for new, old in enumerate(order)}
        out = []
        for old in order:
            nd = self.nodes[old]
            nd.parents = [remap[p] for p in nd.parents]
            out.append(nd)
        return out

    def _materialize(self, sym: _Sym, force_new: bool = False, name: str = "") -> int:
        """The node holding ``sym``'s value (a new linear node unless it is one already)."""
        if len(sym.terms) == 1 and not force_new:
            (n, w), = sym.terms.items()
            if w is None and n != 0 and not np.any(sym.bias) and self.nodes[n].size == sym.size:
                return n
        if not sym.terms:
            raise self.unsupported("the value does not depend on the input")
        parents = sorted(sym.terms)
        mats = [sym.terms[p] for p in parents]
        node = Node("linear", parents, sym.size, name=name or self.cur_name, shape=sym.shape,
                    mats=mats, bias=sym.bias.reshape(-1).copy())
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _value(self, name: str) -> Any:
        if name in self.consts:
            return self.consts[name]
        if name in self.syms:
            v = self.syms[name]
            if isinstance(v, _Final):
                if self.cur_op in ("Identity",):
                    return v
                raise UnsupportedOperator(v.op, v.name, "only a final Softmax (on the graph output) can be dropped")
            return v
        raise self.unsupported(f"input {name!r} is not produced by a supported node")

    # -- linear operator application --------------------------------------------------------------
    def _push(self, sym: _Sym, lin: Callable[[np.ndarray], np.ndarray], full: Callable[[np.ndarray], np.ndarray]) -> _Sym:
        """Apply an affine operator (``lin``: linear part on a batch, ``full``: with its bias)."""
        bias_out = full(sym.bias[None])
        out_shape = tuple(bias_out.shape[1:])
        out_size = int(np.prod(out_shape, dtype=np.int64))
        terms: dict[int, np.ndarray | None] = {}
        for n, w in sym.terms.items():
            n_in = self.nodes[n].size
            if out_size * n_in > MAX_DENSE:
                raise self.unsupported(
                    f"its dense matrix ({out_size} x {n_in}) exceeds the size bound propagation handles"
                )
            if isinstance(w, ConvOp):
                w = w.dense()
            res = np.empty((out_size, n_in))
            step = max(1, _CHUNK_ELEMS // max(out_size, sym.size, 1))
            for s in range(0, n_in, step):
                e = min(n_in, s + step)
                if w is None:
                    basis = np.zeros((e - s, sym.size))
                    basis[np.arange(e - s), np.arange(s, e)] = 1.0
                else:
                    basis = w[:, s:e].T
                res[:, s:e] = lin(basis.reshape((e - s,) + sym.shape)).reshape(e - s, out_size).T
            terms[n] = res
        return _Sym(terms, bias_out[0], out_shape)

    def _rows(self, sym: _Sym, idx: np.ndarray, shape: tuple[int, ...]) -> _Sym:
        """Select/permute/repeat rows: ``out_flat = in_flat[idx]``."""
        terms = {}
        for n, w in sym.terms.items():
            if w is None:
                m = np.zeros((idx.size, sym.size))
                m[np.arange(idx.size), idx] = 1.0
                terms[n] = m
            else:
                terms[n] = as_dense(w)[idx]
        return _Sym(terms, sym.bias.reshape(-1)[idx], shape)

    def _reshape(self, sym: _Sym, shape: tuple[int, ...]) -> _Sym:
        if int(np.prod(shape, dtype=np.int64)) != sym.size:
            raise self.unsupported(f"cannot reshape {sym.shape} to {shape} per sample")
        return _Sym(dict(sym.terms), sym.bias.reshape(shape), shape)

    def _scale_rows(self, sym: _Sym, c: np.ndarray) -> _Sym:
        c = c.reshape(-1)
        terms = {}
        for n, w in sym.terms.items():
            if w is None:
                terms[n] = np.diag(c)
            elif isinstance(w, ConvOp):
                sc = w.scaled(c)
                terms[n] = sc if sc is not None else c[:, None] * w.dense()
            else:
                terms[n] = c[:, None] * w
        return _Sym(terms, sym.bias.reshape(-1) * c, sym.shape)

    def _broadcast_sym(self, sym: _Sym, shape: tuple[int, ...]) -> _Sym:
        if shape == sym.shape:
            return sym
        src = np.arange(sym.size).reshape((1,) + sym.shape)
        try:
            idx = np.broadcast_to(src, (1,) + shape)[0].reshape(-1)
        except ValueError as exc:
            raise self.unsupported(f"cannot broadcast {sym.shape} to {shape}") from exc
        return self._rows(sym, idx, shape)

    def _bshape(self, *shapes: tuple[int, ...]) -> tuple[int, ...]:
        try:
            full = np.broadcast_shapes(*shapes)
        except ValueError as exc:
            raise self.unsupported(f"shapes {shapes} do not broadcast") from exc
        rank = max(len(s) for s in shapes if s is not None)
        if full[0] != 1 or len(full) != rank:
            raise self.unsupported("a constant operand would change the batch dimension")
        return tuple(full[1:])

    def _add_const(self, sym: _Sym, c: np.ndarray, sign: float = 1.0) -> _Sym:
        """``sign * sym + c`` with broadcasting."""
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > len(sym.shape) + 1:
            raise self.unsupported("a constant operand of higher rank than the batch-shaped input")
        shape = self._bshape((1,) + sym.shape, c.shape)
        s = self._broadcast_sym(sym, shape)
        if sign != 1.0:
            s = self._scale_rows(s, np.full(s.size, sign))
        cb = np.broadcast_to(c, (1,) + shape)[0]
        return _Sym(s.terms, s.bias + cb, shape)

    def _mul_const(self, sym: _Sym, c: np.ndarray) -> _Sym:
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > len(sym.shape) + 1:
            raise self.unsupported("a constant operand of higher rank than the batch-shaped input")
        shape = self._bshape((1,) + sym.shape, c.shape)
        s = self._broadcast_sym(sym, shape)
        cb = np.broadcast_to(c, (1,) + shape)[0]
        return self._scale_rows(s, cb)

    def _add_syms(self, a: _Sym, b: _Sym, sign: float) -> _Sym:
        shape = self._bshape((1,) + a.shape, (1,) + b.shape)
        a = self._broadcast_sym(a, shape)
        b = self._broadcast_sym(b, shape)
        if sign != 1.0:
            b = self._scale_rows(b, np.full(b.size, sign))
        terms = dict(a.terms)
        for n, w in b.terms.items():
            if n in terms:
                w0 = terms[n]
                size = self.nodes[n].size
                terms[n] = (np.eye(size) if w0 is None else as_dense(w0)) + (np.eye(size) if w is None else as_dense(w))
            else:
                terms[n] = w
        return _Sym(terms, a.bias + b.bias, shape)

    # -- per-operator handlers -------------------------------------------------------------------
    def _visit(self, node: Any) -> None:
        op = node.op_type
        ins = list(node.input)
        outs = [o for o in node.output]
        if node.domain not in ("", "ai.onnx"):
            raise self.unsupported(f"domain {node.domain!r}")
        a = _attrs(node)

        if op == "Constant":
            self.consts[outs[0]] = self._constant(a)
            return
        # anything computed from constants only is folded
        if all((i == "" or i in self.consts) for i in ins) and op != "Shape":
            self._fold(node)
            return
        if op == "Shape":
            v = self._value(ins[0])
            shape = np.array((1,) + v.shape if isinstance(v, _Sym) else v.shape, dtype=np.int64)
            start = a.get("start", 0)
            end = a.get("end", None)
            self.consts[outs[0]] = shape[start:end]
            return
        if op in ("Identity", "Dropout"):
            if op == "Dropout" and len(outs) > 1 and outs[1]:
                pass  # the mask output is never produced; using it raises later
            self.syms[outs[0]] = self._value(ins[0])
            return
        if op in ("Softmax", "LogSoftmax"):
            x = self._sym(ins[0])
            axis = a.get("axis", 1 if self.opset < 13 else -1)
            rank = len(x.shape) + 1
            axis = axis + rank if axis < 0 else axis
            if axis == 0:
                raise self.unsupported("softmax over the batch axis")
            if self.opset < 13:
                ok = True  # coerced to 2-D from axis: all trailing dims of a sample
                ok = ok and axis == 1
            else:
                ok = x.shape[axis - 1] == x.size
            if not ok:
                raise self.unsupported("softmax over part of a sample")
            self.syms[outs[0]] = _Final(x, op, self.cur_name)
            return
        if op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh"):
            x = self._sym(ins[0])
            kind = {"Relu": "relu", "LeakyRelu": "leaky", "Sigmoid": "sigmoid", "Tanh": "tanh"}[op]
            self._nonlinear(outs[0], x, kind, alpha=float(a.get("alpha", 0.01)))
            return
        if op == "MaxPool":
            if len(outs) > 1 and outs[1]:
                raise self.unsupported("the Indices output is not supported")
            x = self._sym(ins[0])
            if len(x.shape) < 2:
                raise self.unsupported("input of rank < 3")
            n_sp = len(x.shape) - 1
            kernel = list(a["kernel_shape"])
            strides = list(a.get("strides", [1] * n_sp))
            dil = list(a.get("dilations", [1] * n_sp))
            pads = _ops.resolve_pads(x.shape[1:], kernel, strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))
            try:
                idx, out_shape = _ops.maxpool_index(x.shape[0], x.shape[1:], kernel, strides, pads, dil, bool(a.get("ceil_mode", 0)))
            except ValueError as exc:
                raise self.unsupported(str(exc)) from exc
            parent = self._materialize(x, force_new=self._needs_linear(x))
            self.nodes.append(Node("maxpool", [parent], idx.shape[0], name=self.cur_name, shape=out_shape, pool_idx=idx))
            self.syms[outs[0]] = _Sym({len(self.nodes) - 1: None}, np.zeros(out_shape), out_shape)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise self.unsupported()
        result = handler(ins, a)
        self.syms[outs[0]] = result

    def _needs_linear(self, x: _Sym) -> bool:
        # the input node always feeds a linear node
        return len(x.terms) == 1 and 0 in x.terms

    def _nonlinear(self, out: str, x: _Sym, kind: str, alpha: float = 0.0) -> None:
        parent = self._materialize(x, force_new=self._needs_linear(x))
        self.nodes.append(Node(kind, [parent], x.size, name=self.cur_name, shape=x.shape, alpha=alpha))
        self.syms[out] = _Sym({len(self.nodes) - 1: None}, np.zeros(x.shape), x.shape)

    def _sym(self, name: str) -> _Sym:
        v = self._value(name)
        if isinstance(v, _Final):
            raise UnsupportedOperator(v.op, v.name, "only a final Softmax (on the graph output) can be dropped")
        if not isinstance(v, _Sym):
            raise self.unsupported("expected an input-dependent operand")
        return v

    def _const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise self.unsupported(f"operand {name!r} must be a constant")
        return self.consts[name]

    def _constant(self, a: dict[str, Any]) -> np.ndarray:
        from onnx import numpy_helper

        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
            if key in a:
                return np.array(a[key], dtype=dt)
        raise self.unsupported("Constant without a dense value")

    def _fold(self, node: Any) -> None:
        """Evaluate a node whose inputs are all constants (shape computations and the like)."""
        import onnx
        from onnx.reference import ReferenceEvaluator

        ins = [i for i in node.input]
        inputs = []
        feeds = {}
        for i in ins:
            if i == "":
                continue
            arr = self.consts[i]
            inputs.append(onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
            feeds[i] = arr
        outputs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
        graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
        m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        try:
            res = ReferenceEvaluator(m).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - report as unsupported
            raise self.unsupported(f"constant folding failed ({exc})") from exc
        for o, r in zip([o for o in node.output if o], res):
            self.consts[o] = np.asarray(r)

    # affine operators -------------------------------------------------------------------------
    def _op_Gemm(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        if ins[0] not in self.syms or ins[1] not in self.consts:
            raise self.unsupported("only input @ constant is supported")
        x = self._sym(ins[0])
        if a.get("transA", 0):
            raise self.unsupported("transA on the input-dependent operand")
        if len(x.shape) != 1:
            raise self.unsupported(f"Gemm on a per-sample shape {x.shape}")
        w = self._const(ins[1]).astype(np.float64)
        if a.get("transB", 0):
            w = w.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        c = None
        if len(ins) > 2 and ins[2]:
            c = self._const(ins[2]).astype(np.float64)
            if c.ndim == 2 and c.shape[0] != 1:
                raise self.unsupported("a bias with a batch dimension")
            c = np.broadcast_to(c.reshape(-1) if c.ndim else c, (w.shape[1],)) * beta
        wm = alpha * w

        def lin(v: np.ndarray) -> np.ndarray:
            return v @ wm

        def full(v: np.ndarray) -> np.ndarray:
            out = v @ wm
            return out + c if c is not None else out

        return self._push(x, lin, full)

    def _op_MatMul(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        if ins[0] not in self.syms or ins[1] not in self.consts:
            raise self.unsupported("only input @ constant is supported")
        x = self._sym(ins[0])
        w = self._const(ins[1]).astype(np.float64)
        if w.ndim != 2:
            raise self.unsupported("only a 2-D constant right operand is supported")
        if w.shape[0] != x.shape[-1]:
            raise self.unsupported("shape mismatch")
        return self._push(x, lambda v: v @ w, lambda v: v @ w)

    def _binary(self, ins: list[str], kind: str) -> _Sym:
        l_sym, r_sym = ins[0] in self.syms, ins[1] in self.syms
        if l_sym and r_sym:
            if kind in ("Add", "Sub"):
                return self._add_syms(self._sym(ins[0]), self._sym(ins[1]), 1.0 if kind == "Add" else -1.0)
            raise self.unsupported("both operands depend on the input")
        if l_sym:
            x, c = self._sym(ins[0]), self._const(ins[1]).astype(np.float64)
            if kind == "Add":
                return self._add_const(x, c)
            if kind == "Sub":
                return self._add_const(x, -c)
            if kind == "Mul":
                return self._mul_const(x, c)
            return self._mul_const(x, 1.0 / c)
        x, c = self._sym(ins[1]), self._const(ins[0]).astype(np.float64)
        if kind == "Add":
            return self._add_const(x, c)
        if kind == "Sub":
            return self._add_const(x, c, sign=-1.0)
        if kind == "Mul":
            return self._mul_const(x, c)
        raise self.unsupported("division by an input-dependent value")

    def _op_Add(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        return self._binary(ins, "Add")

    def _op_Sub(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        return self._binary(ins, "Sub")

    def _op_Mul(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        return self._binary(ins, "Mul")

    def _op_Div(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        return self._binary(ins, "Div")

    def _op_Neg(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        return self._scale_rows(x, np.full(x.size, -1.0))

    def _op_Conv(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        w = self._const(ins[1]).astype(np.float64)
        b = self._const(ins[2]).astype(np.float64) if len(ins) > 2 and ins[2] else None
        n_sp = w.ndim - 2
        if len(x.shape) != n_sp + 1:
            raise self.unsupported(f"input shape {x.shape} does not fit the kernel {w.shape}")
        group = int(a.get("group", 1))
        if x.shape[0] != w.shape[1] * group:
            raise self.unsupported("channel count does not fit the weight")
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        strides = list(a.get("strides", [1] * n_sp))
        dil = list(a.get("dilations", [1] * n_sp))
        pads = _ops.resolve_pads(x.shape[1:], kernel, strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))

        def lin(v: np.ndarray) -> np.ndarray:
            return _ops.conv(v, w, None, strides, pads, dil, group)

        def full(v: np.ndarray) -> np.ndarray:
            return _ops.conv(v, w, b, strides, pads, dil, group)

        # a convolution applied directly to a node's values stays structured when its dense
        # matrix would be large (the transposed convolution is much cheaper than a dense product)
        direct = {n: t for n, t in x.terms.items() if t is None}
        if n_sp in (1, 2) and direct:
            op = ConvOp(w, x.shape, strides, pads, dil, group)
            if op.shape[0] * op.shape[1] > DENSE_CONV_MAX:
                rest = _Sym({n: t for n, t in x.terms.items() if t is not None}, x.bias, x.shape)
                out = self._push(rest, lin, full)
                for n in direct:
                    out.terms[n] = op
                return out
        return self._push(x, lin, full)

    def _op_BatchNormalization(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        if a.get("training_mode", 0):
            raise self.unsupported("training mode")
        x = self._sym(ins[0])
        scale, bias, mean, var = (self._const(i).astype(np.float64) for i in ins[1:5])
        eps = float(a.get("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        shift = bias - s * mean
        shp = (1, x.shape[0]) + (1,) * (len(x.shape) - 1)
        return self._add_const(self._mul_const(x, s.reshape(shp)), shift.reshape(shp))

    def _op_AveragePool(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        n_sp = len(x.shape) - 1
        kernel = list(a["kernel_shape"])
        strides = list(a.get("strides", [1] * n_sp))
        dil = list(a.get("dilations", [1] * n_sp))
        pads = _ops.resolve_pads(x.shape[1:], kernel, strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))
        ceil_mode = bool(a.get("ceil_mode", 0))
        cip = bool(a.get("count_include_pad", 0))
        if ceil_mode and cip:
            raise self.unsupported("ceil_mode with count_include_pad")

        def f(v: np.ndarray) -> np.ndarray:
            return _ops.avgpool(v, kernel, strides, pads, dil, ceil_mode, cip)

        return self._push(x, f, f)

    def _op_GlobalAveragePool(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        n_sp = len(x.shape) - 1

        def f(v: np.ndarray) -> np.ndarray:
            return v.mean(axis=tuple(range(2, 2 + n_sp)), keepdims=True)

        return self._push(x, f, f)

    def _op_Flatten(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        rank = len(x.shape) + 1
        axis = int(a.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            # [1, N*D]: per sample (batch 1) this is the flattened sample
            return self._reshape(x, (x.size,))
        lead = int(np.prod(x.shape[: axis - 1], dtype=np.int64))
        if lead != 1:
            raise self.unsupported("Flatten would merge samples into the batch axis")
        return self._reshape(x, (x.size,))

    def _op_Reshape(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        target = [int(v) for v in self._const(ins[1]).reshape(-1)]
        allowzero = int(a.get("allowzero", 0))
        if not target or target[0] not in (1, 0, -1) or (target[0] == 0 and allowzero):
            raise self.unsupported(f"target shape {target} does not keep the batch axis first")
        full_in = (1,) + x.shape
        rest = []
        for i, t in enumerate(target[1:], start=1):
            if t == 0 and not allowzero:
                if i >= len(full_in):
                    raise self.unsupported(f"target shape {target}")
                rest.append(full_in[i])
            else:
                rest.append(t)
        if rest.count(-1) > 1 or (target[0] == -1 and -1 in rest):
            raise self.unsupported(f"target shape {target} is ambiguous per sample")
        if -1 in rest:
            known = int(np.prod([r for r in rest if r != -1], dtype=np.int64))
            if known == 0 or x.size % known:
                raise self.unsupported(f"target shape {target}")
            rest[rest.index(-1)] = x.size // known
        if int(np.prod(rest, dtype=np.int64)) != x.size:
            raise self.unsupported(f"target shape {target} merges samples")
        return self._reshape(x, tuple(rest))

    def _axes(self, ins: list[str], a: dict[str, Any]) -> list[int] | None:
        if "axes" in a:
            return [int(v) for v in a["axes"]]
        if len(ins) > 1 and ins[1]:
            return [int(v) for v in self._const(ins[1]).reshape(-1)]
        return None

    def _op_Squeeze(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        rank = len(x.shape) + 1
        axes = self._axes(ins, a)
        if axes is None:
            axes = [i + 1 for i, s in enumerate(x.shape) if s == 1]
        axes = [ax + rank if ax < 0 else ax for ax in axes]
        if 0 in axes:
            raise self.unsupported("squeezing the batch axis")
        shape = tuple(s for i, s in enumerate(x.shape, start=1) if i not in axes)
        return self._reshape(x, shape)

    def _op_Unsqueeze(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        axes = self._axes(ins, a) or []
        rank = len(x.shape) + 1 + len(axes)
        axes = sorted(ax + rank if ax < 0 else ax for ax in axes)
        if 0 in axes:
            raise self.unsupported("unsqueezing before the batch axis")
        full = list((1,) + x.shape)
        for ax in axes:
            full.insert(ax, 1)
        return self._reshape(x, tuple(full[1:]))

    def _op_Transpose(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        rank = len(x.shape) + 1
        perm = list(a.get("perm", list(range(rank))[::-1]))
        if perm[0] != 0:
            raise self.unsupported("transposing the batch axis")
        sp = [p - 1 for p in perm[1:]]
        idx = np.arange(x.size).reshape(x.shape).transpose(sp).reshape(-1)
        return self._rows(x, idx, tuple(x.shape[p] for p in sp))

    def _op_Concat(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        parts = []
        for i in ins:
            if i in self.syms:
                parts.append(self._sym(i))
            else:
                c = self._const(i).astype(np.float64)
                if c.ndim == 0 or c.shape[0] != 1:
                    raise self.unsupported("a constant operand with a batch dimension other than 1")
                parts.append(_Sym({}, c[0], c.shape[1:]))
        rank = len(parts[0].shape) + 1
        axis = int(a["axis"])
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise self.unsupported("concatenation along the batch axis")
        ax = axis - 1
        shapes = [p.shape for p in parts]
        out_shape = list(shapes[0])
        out_shape[ax] = sum(s[ax] for s in shapes)
        out_shape_t = tuple(out_shape)
        pos = np.arange(int(np.prod(out_shape_t, dtype=np.int64))).reshape(out_shape_t)
        out_n = pos.size
        terms: dict[int, np.ndarray | None] = {}
        bias = np.zeros(out_n)
        start = 0
        for p in parts:
            sl = [slice(None)] * len(out_shape_t)
            sl[ax] = slice(start, start + p.shape[ax])
            start += p.shape[ax]
            rows = pos[tuple(sl)].reshape(-1)
            bias[rows] = p.bias.reshape(-1)
            for n, w in p.terms.items():
                if n not in terms:
                    terms[n] = np.zeros((out_n, self.nodes[n].size))
                t = terms[n]
                assert t is not None
                if w is None:
                    t[rows, np.arange(p.size)] += 1.0
                else:
                    t[rows] += as_dense(w)
        return _Sym(terms, bias, out_shape_t)

    def _op_Clip(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        """``min(max(x, lo), hi)`` = ``lo + relu(x - lo) - relu(x - hi)`` (ReLU6 and friends)."""
        x = self._sym(ins[0])
        lo = a.get("min")
        hi = a.get("max")
        if len(ins) > 1 and ins[1]:
            lo = self._const(ins[1])
        if len(ins) > 2 and ins[2]:
            hi = self._const(ins[2])
        lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
        hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
        if lo is None and hi is None:
            return x
        if lo is not None and hi is not None and lo > hi:
            raise self.unsupported("min > max")

        def relu_of(s: _Sym) -> _Sym:
            parent = self._materialize(s, force_new=True)
            self.nodes.append(Node("relu", [parent], s.size, name=self.cur_name, shape=s.shape))
            return _Sym({len(self.nodes) - 1: None}, np.zeros(s.shape), s.shape)

        if lo is None:  # hi - relu(hi - x)
            r = relu_of(self._add_const(x, np.array(hi), sign=-1.0))
            return self._add_const(r, np.array(hi), sign=-1.0)
        out = self._add_const(relu_of(self._add_const(x, np.array(-lo))), np.array(lo))
        if hi is not None:
            out = self._add_syms(out, relu_of(self._add_const(x, np.array(-hi))), -1.0)
        return out

    def _op_Pad(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        if a.get("mode", "constant") != "constant":
            raise self.unsupported(f"mode {a.get('mode')}")
        pads = [int(v) for v in (self._const(ins[1]).reshape(-1) if len(ins) > 1 and ins[1] else a.get("pads", []))]
        value = 0.0
        if len(ins) > 2 and ins[2]:
            value = float(np.asarray(self._const(ins[2])).reshape(-1)[0])
        elif "value" in a:
            value = float(a["value"])
        rank = len(x.shape) + 1
        axes = list(range(rank))
        if len(ins) > 3 and ins[3]:
            axes = [int(v) + rank if int(v) < 0 else int(v) for v in self._const(ins[3]).reshape(-1)]
        n = len(axes)
        width = [(0, 0)] * rank
        for i, ax in enumerate(axes):
            width[ax] = (pads[i], pads[i + n])
        if width[0] != (0, 0) or any(p < 0 for pw in width for p in pw):
            raise self.unsupported("padding of the batch axis or negative padding")

        def lin(v: np.ndarray) -> np.ndarray:
            return np.pad(v, width)

        def full(v: np.ndarray) -> np.ndarray:
            return np.pad(v, width, constant_values=value)

        return self._push(x, lin, full)

    def _op_Slice(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        x = self._sym(ins[0])
        rank = len(x.shape) + 1
        if len(ins) > 1:
            starts = [int(v) for v in self._const(ins[1]).reshape(-1)]
            ends = [int(v) for v in self._const(ins[2]).reshape(-1)]
            axes = [int(v) for v in self._const(ins[3]).reshape(-1)] if len(ins) > 3 and ins[3] else list(range(len(starts)))
            steps = [int(v) for v in self._const(ins[4]).reshape(-1)] if len(ins) > 4 and ins[4] else [1] * len(starts)
        else:
            starts, ends = list(a["starts"]), list(a["ends"])
            axes = list(a.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        sl = [slice(None)] * rank
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = ax + rank if ax < 0 else ax
            if ax == 0:
                raise self.unsupported("slicing the batch axis")
            big = np.iinfo(np.int64).max // 2
            sl[ax] = slice(None if abs(st) >= big else st, None if abs(en) >= big else en, sp)
        index = tuple(sl)

        def f(v: np.ndarray) -> np.ndarray:
            return v[index]

        return self._push(x, f, f)

    def _reduce(self, ins: list[str], a: dict[str, Any], mean: bool) -> _Sym:
        x = self._sym(ins[0])
        rank = len(x.shape) + 1
        axes = self._axes(ins, a)
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return x
            raise self.unsupported("reducing over the batch axis")
        axes_t = tuple(sorted(ax + rank if ax < 0 else ax for ax in axes))
        if 0 in axes_t:
            raise self.unsupported("reducing over the batch axis")
        keep = bool(a.get("keepdims", 1))

        def f(v: np.ndarray) -> np.ndarray:
            return v.mean(axis=axes_t, keepdims=keep) if mean else v.sum(axis=axes_t, keepdims=keep)

        return self._push(x, f, f)

    def _op_ReduceMean(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        return self._reduce(ins, a, True)

    def _op_ReduceSum(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        return self._reduce(ins, a, False)

    def _op_Cast(self, ins: list[str], a: dict[str, Any]) -> _Sym:
        import onnx

        to = int(a.get("to", 0))
        if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            raise self.unsupported("a cast of input-dependent values to a non-float type")
        return self._sym(ins[0])
