"""The network as bound propagation sees it: a DAG of dense affine nodes and nonlinear nodes.

This module is the data structure only. ``Network.from_onnx`` builds one with the importer
(``certify/importer.py``), which composes every chain of affine operators into one matrix per
parent and leaves the nonlinear operators as nodes of their own; what each ONNX operator becomes,
and what a reviewer must check for it, is in the operator family modules:

- ``certify/ops/affine.py``: Gemm, MatMul, Add/Sub/Mul/Div/Neg, Conv, BatchNormalization,
  AveragePool, GlobalAveragePool, ReduceMean/ReduceSum, Cast (and ``ConvOp``);
- ``certify/ops/shape.py``: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Pad, Slice,
  Identity/Dropout, Shape;
- ``certify/ops/activation.py``: Relu, LeakyRelu, Sigmoid, Tanh, Clip, MaxPool,
  Softmax/LogSoftmax, with their forward evaluation, interval bounds and linear relaxations.

Node kinds:
- ``input``: the flattened per-sample model input (always node 0);
- ``linear``: ``y = sum_i W_i x_{parent_i} + b`` (``W_i`` dense ``[size, parent size]``, a
  ``StructuredMap`` such as ``ConvOp``, or None for the identity);
- ``relu``, ``leaky`` (slope ``alpha`` below 0), ``sigmoid``, ``tanh``: elementwise on one parent;
- ``maxpool``: ``y_j = max_k x[pool_idx[j, k]]`` (``-1`` marks padding, never the first column).
Every consumer of the input is a linear node, and the output node (the logits) is a linear node.

What to check here: ``apply_mat``/``back_mat``/``rows_of``/``cols_of`` agree with the dense
matrix for every kind of ``W`` (None, dense, structured), and ``Network.forward`` evaluates the
nodes in order. ``ConvOp``, ``pool_values`` and ``eval_nonlinear`` are re-exported from the ops
modules (lazily: those modules import this one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l0tre_core.certify.arrays import backend_of

# the importer reads these through this module (``network.DENSE_CONV_MAX``) when it runs
MAX_DENSE = 48_000_000  # entries of one dense matrix (384 MB in float64)
DENSE_CONV_MAX = 1_000_000  # a convolution with a larger dense matrix stays a ConvOp
COLS_CACHE_MAX = 16_000_000  # entries of an input layer's matrix kept transposed (``Node.input_cols``)


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
    # float32 error model (``certify/float32.py``): per parent, the row sums of |A_k|...|A_1| over
    # the chain of ONNX operators composed into this node; the magnitude of its constants; the
    # summed relative rounding factor of the chain
    mass: list[np.ndarray] = field(default_factory=list)
    bmass: np.ndarray | None = None
    gsum: float = 0.0
    abs_exact: list[bool] = field(default_factory=list)  # per parent: |A_k|...|A_1| == |W| (no cancellation)
    tensor: str | None = None  # the ONNX tensor whose values this node holds, where there is one
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def mat_abs(self, i: int) -> Any:
        """``|W_i|`` (None for the identity)."""
        key = f"abs{i}"
        if key not in self._cache:
            w = self.mats[i]
            self._cache[key] = None if w is None else (w.abs() if isinstance(w, StructuredMap) else np.abs(w))
        return self._cache[key]


    def input_cols(self, i: int, idx: np.ndarray) -> np.ndarray:
        """``W_i[:, idx]`` laid out as ``[*idx.shape, Dout]`` (the columns of a few free input
        scalars). The transposed matrix is kept when it is small enough (``COLS_CACHE_MAX``):
        every box of every input gathers its columns from it."""
        w = self.mats[i]
        if w is None:
            raise ValueError("input_cols of the identity")
        key = f"colsT{i}"
        if key not in self._cache and w.shape[0] * w.shape[1] <= COLS_CACHE_MAX:
            self._cache[key] = np.ascontiguousarray(as_dense(w).T)
        wt = self._cache.get(key)
        dev = backend_of(idx)
        if wt is not None:
            return dev.put(wt)[idx]
        return dev.asarray(np.moveaxis(cols_of(w, dev.get(idx)), 0, -1))


class StructuredMap(ABC):
    """A linear map kept without its dense matrix (``ops.affine.ConvOp``, ``SparseMap``): ``shape``
    is ``(Dout, Din)``; ``apply`` is ``x -> W x``, ``back`` is ``a -> a W``, ``rows``/``cols`` give
    dense rows/columns, ``dense`` the whole matrix and ``abs`` the map of ``|W|``."""

    shape: tuple[int, int]

    @abstractmethod
    def abs(self) -> "StructuredMap": ...

    @abstractmethod
    def row_abs_max(self) -> np.ndarray:
        """An upper bound on ``max_i |W_ji|`` per row."""

    @abstractmethod
    def apply(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def back(self, a: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def rows(self, idx: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def cols(self, idx: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def dense(self) -> np.ndarray: ...


class SparseMap(StructuredMap):
    """A linear map in gather form: ``y_j = sum_k wts[j, k] x[idx[j, k]]`` (``idx`` -1: nothing).

    Moves (padding, slicing, transposition) and averages over windows, applied to a node whose
    dense matrix would be too large: rows have few entries, so no matrix is ever formed."""

    def __init__(self, idx: np.ndarray, wts: np.ndarray, n_in: int) -> None:
        self.idx = np.asarray(idx, dtype=np.int64)
        self.wts = np.where(self.idx >= 0, np.asarray(wts, dtype=np.float64), 0.0)
        self.shape = (int(self.idx.shape[0]), int(n_in))
        self._safe = np.where(self.idx >= 0, self.idx, 0)
        # the transpose in the same gather form, so that ``back`` is a gather too
        j, k = np.nonzero(self.idx >= 0)
        i = self.idx[j, k]
        order = np.argsort(i, kind="stable")
        i, j, w = i[order], j[order], self.wts[j[order], k[order]]
        counts = np.bincount(i, minlength=n_in)
        width = max(1, int(counts.max(initial=0)))
        slot = np.arange(i.size) - np.repeat(np.cumsum(counts) - counts, counts)
        self._t_idx = np.zeros((n_in, width), dtype=np.int64)
        self._t_wts = np.zeros((n_in, width))
        self._t_idx[i, slot] = j
        self._t_wts[i, slot] = w

    def abs(self) -> "SparseMap":
        return SparseMap(self.idx, np.abs(self.wts), self.shape[1])

    def scaled(self, c: np.ndarray) -> "SparseMap":
        """``diag(c) W``."""
        return SparseMap(self.idx, self.wts * np.asarray(c, dtype=np.float64).reshape(-1, 1), self.shape[1])

    def row_abs_max(self) -> np.ndarray:
        srt = np.sort(np.where(self.idx >= 0, self.idx, -1 - np.arange(self.idx.shape[1])), axis=1)
        if (np.diff(srt, axis=1) == 0).any():  # a column met twice in a row: its entries add up
            return np.abs(self.wts).sum(axis=1)
        return np.abs(self.wts).max(axis=1)

    @staticmethod
    def _gather(x: np.ndarray, idx: np.ndarray, wts: np.ndarray) -> np.ndarray:
        out = x[..., idx[:, 0]] * wts[:, 0]
        for k in range(1, idx.shape[1]):
            out += x[..., idx[:, k]] * wts[:, k]
        return out

    def apply(self, x: np.ndarray) -> np.ndarray:
        dev = backend_of(x)
        return self._gather(x, dev.put(self._safe), dev.put(self.wts))

    def back(self, a: np.ndarray) -> np.ndarray:
        dev = backend_of(a)
        return self._gather(a, dev.put(self._t_idx), dev.put(self._t_wts))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.zeros((idx.size, self.shape[1]))
        r = np.repeat(np.arange(idx.size), self.idx.shape[1])
        np.add.at(out, (r, self._safe[idx].reshape(-1)), self.wts[idx].reshape(-1))
        return out

    def cols(self, idx: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(idx, return_inverse=True)
        e = np.zeros((uniq.size, self.shape[1]))
        e[np.arange(uniq.size), uniq] = 1.0
        return self.apply(e).T[:, inv.reshape(idx.shape)]

    def dense(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]))


def as_dense(w: Any) -> np.ndarray | None:
    return w.dense() if isinstance(w, StructuredMap) else w


def apply_mat(x: np.ndarray, w: Any) -> np.ndarray:
    """``x [..., Din] -> [..., Dout]`` for ``y = W x`` (one 2-D product: stacked small products
    would not use BLAS well)."""
    if w is None:
        return x
    if isinstance(w, StructuredMap):
        return w.apply(x)
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ backend_of(x).put(w).T).reshape(lead + (w.shape[0],))


def back_mat(a: np.ndarray, w: Any) -> np.ndarray:
    """``a [..., Dout] -> a W [..., Din]``."""
    if w is None:
        return a
    if isinstance(w, StructuredMap):
        return w.back(a)
    lead = a.shape[:-1]
    return (a.reshape(-1, a.shape[-1]) @ backend_of(a).put(w)).reshape(lead + (w.shape[1],))


def rows_of(w: Any, idx: np.ndarray, n_in: int) -> np.ndarray:
    """Dense rows ``W[idx]``."""
    if w is None:
        m = np.zeros((idx.size, n_in))
        m[np.arange(idx.size), idx] = 1.0
        return m
    if isinstance(w, StructuredMap):
        return w.rows(idx)
    return w[idx]


def cols_of(w: Any, idx: np.ndarray) -> np.ndarray:
    """``W[:, idx]`` -> ``[Dout, *idx.shape]`` (w not None)."""
    if isinstance(w, StructuredMap):
        return w.cols(idx)
    return w[:, idx]



class Network:
    """A classifier graph prepared for bound propagation (built once per model)."""

    def __init__(self, nodes: list[Node], sample_shape: tuple[int, ...]) -> None:
        self.nodes = nodes
        self.sample_shape = tuple(sample_shape)
        self.output = len(nodes) - 1
        self.final: str | None = None  # "Softmax" or "LogSoftmax" when the importer dropped one
        self.n_inputs = nodes[0].size
        self.n_outputs = nodes[-1].size
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for j, nd in enumerate(nodes):
            for p in nd.parents:
                self.consumers[p].append(j)
        self.last_use = [max(c) if c else j for j, c in enumerate(self.consumers)]
        # the cut before the dense head: the parent of the first linear node with dense matrices
        # only, when every later node reads nothing earlier (a chain from there on)
        self.cut: int | None = None
        for j, nd in enumerate(nodes):
            if nd.kind == "linear" and nd.mats and all(isinstance(w, np.ndarray) for w in nd.mats) and len(nd.parents) == 1:
                k = nd.parents[0]
                if k > 0 and all(min(later.parents) >= k for later in nodes[k + 1 :] if later.parents):
                    self.cut = k
                break

    @classmethod
    def from_onnx(
        cls, model: Any, input_name: str, output_name: str, sample_shape: tuple[int, ...]
    ) -> "Network":
        from l0tre_core.certify.importer import _Importer

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

    def node_values(self, x: np.ndarray) -> list[np.ndarray]:
        """Every node's values ``[B, size]`` for ``[B, D]`` model-space inputs (small batches)."""
        from l0tre_core.certify.ops.activation import eval_nonlinear

        vals: list[np.ndarray] = [np.asarray(x, dtype=np.float64).reshape(-1, self.n_inputs)]
        for nd in self.nodes[1:]:
            if nd.kind == "linear":
                acc = np.broadcast_to(nd.bias, (vals[0].shape[0], nd.size)).copy()
                for p, w in zip(nd.parents, nd.mats):
                    acc += apply_mat(vals[p], w)
                vals.append(acc)
            else:
                vals.append(eval_nonlinear(nd, vals[nd.parents[0]]))
        return vals

    def _forward_chunk(self, x: np.ndarray) -> np.ndarray:
        from l0tre_core.certify.ops.activation import eval_nonlinear

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


def __getattr__(name: str) -> Any:
    """Re-exports from the operator family modules (imported on first use: they import this one)."""
    if name == "ConvOp":
        from l0tre_core.certify.ops.affine import ConvOp

        return ConvOp
    if name in ("pool_values", "eval_nonlinear"):
        from l0tre_core.certify.ops import activation

        return getattr(activation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
