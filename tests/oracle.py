"""An independent adversarial-example oracle for checking L0 soundness claims.

Nothing here imports ``l0tre_core`` (and in particular not ``l0tre_core.certify``): the oracle is
built from NumPy, SciPy (HiGHS MILP) and onnxruntime only, so a bug in the certifier cannot hide
itself by being shared with the oracle.

The question it answers: given an ONNX classifier, a clean input ``x0`` in *data space*, the pixel
structure (layout NCHW / NHWC / flat, channels), the valid range ``[lo, hi]`` in data space, an
optional normalisation applied outside the graph (model input = ``(x - mean) / std``, in float32),
a reference class and ``t``: is there an input with at most ``t`` changed units (a unit is a pixel,
i.e. one spatial location whose channels may all change, or with ``unit="feature"`` one scalar),
every scalar of a changed unit inside ``[lo, hi]``, on which onnxruntime's float32 output has
``np.argmax(out) != ref`` and only finite values? ``np.argmax``'s first-index rule is the
specification: a tie with a lower-index class is a flip.

Search (tiny inputs, <= 25 units at t = 2):

(a) grid: for every t-subset of units, a grid of values per scalar (the corners lo/hi, an interior
    grid and the clean value), run through onnxruntime in large batches; the lowest points are then
    refined by a shrinking local random search;
(b) MILP: for networks made of piecewise-linear operators (the generator in ``nearboundary.py``
    hands over their float64 weights as a :class:`Net`; the oracle never parses ONNX for this), an
    exact big-M MILP per subset and per competing class minimising ``z_ref - z_k`` over the box
    (scipy.optimize.milp / HiGHS). Each argmin point is re-evaluated in onnxruntime, with points
    nudged by float32 ulps towards the boundary and points on the segment from ``x0`` where the
    float64 margin crosses zero: that is where float32 evaluation and float64 proofs disagree.
    Subsets whose lower bound on the float64 margin (linear relaxation pushed forward, intersected
    with intervals) exceeds ``slack`` (far above any float32 rounding) are skipped; the same bounds
    give the MILP its big-M constants. A final Sigmoid gets a second objective per lower-index class
    (maximise ``min(z_k, z_ref)``: both saturate to the same float32 value, and the tie flips).

Every answer is a verified flip: re-run alone through onnxruntime, its changed units recounted.
``None`` means the search found nothing, which is evidence, not proof.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PWL_KINDS = ("relu", "leaky", "clip", "maxpool", "cast16")
SMOOTH_KINDS = ("sigmoid", "tanh")
BATCH = 32768
SIGMOID_SATURATION = 12.0  # logit above which float32 sigmoids may tie (they reach 1.0 near 16.6)


# ----------------------------------------------------------------------------------------------
# the network as float64 weights (built by the generator alongside the ONNX file)


@dataclass
class Node:
    """One node of a float64 network over flattened per-sample tensors.

    kinds: ``input`` (node 0), ``affine`` (``sum_i mats[i] @ v[parents[i]] + bias``; a None matrix
    is the identity), ``relu``, ``leaky`` (slope ``alpha`` below 0), ``clip`` (to ``[lo, hi]``),
    ``maxpool`` (``y_j = max_k v[pool_idx[j, k]]``, -1 is padding), ``cast16`` (a round trip through
    float16: the identity in float64, rounding in onnxruntime), ``sigmoid``, ``tanh``.
    """

    kind: str
    parents: list[int]
    size: int
    mats: list[np.ndarray | None] = field(default_factory=list)
    bias: np.ndarray | None = None
    alpha: float = 0.0
    lo: float = 0.0
    hi: float = 0.0
    pool_idx: np.ndarray | None = None


@dataclass
class Net:
    """A DAG of :class:`Node`; ``output`` is the logits node, ``final`` a monotone op the graph
    applies after it (``softmax``, ``sigmoid`` or None)."""

    nodes: list[Node]
    output: int
    final: str | None = None

    @property
    def d_in(self) -> int:
        return self.nodes[0].size

    @property
    def n_classes(self) -> int:
        return self.nodes[self.output].size

    @property
    def milp_ok(self) -> bool:
        return all(n.kind in ("input", "affine") + PWL_KINDS for n in self.nodes)

    def values(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x, np.float64)
        vals: list[np.ndarray] = [x]
        for nd in self.nodes[1:]:
            if nd.kind == "affine":
                acc = np.zeros(x.shape[:-1] + (nd.size,)) + nd.bias
                for p, m in zip(nd.parents, nd.mats):
                    acc = acc + (vals[p] if m is None else vals[p] @ m.T)
                vals.append(acc)
                continue
            v = vals[nd.parents[0]]
            if nd.kind == "relu":
                vals.append(np.maximum(v, 0.0))
            elif nd.kind == "leaky":
                vals.append(np.where(v >= 0, v, nd.alpha * v))
            elif nd.kind == "clip":
                vals.append(np.clip(v, nd.lo, nd.hi))
            elif nd.kind == "cast16":
                vals.append(v)
            elif nd.kind == "sigmoid":
                vals.append(0.5 * (1.0 + np.tanh(0.5 * v)))
            elif nd.kind == "tanh":
                vals.append(np.tanh(v))
            elif nd.kind == "maxpool":
                idx = nd.pool_idx
                g = np.where(idx >= 0, v[..., np.maximum(idx, 0)], -np.inf)
                vals.append(g.max(axis=-1))
            else:
                raise ValueError(f"unknown node kind {nd.kind}")
        return vals

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (before ``final``) for inputs ``[..., D]``."""
        return self.values(x)[self.output]

    def with_input_affine(self, scale: np.ndarray, shift: np.ndarray) -> "Net":
        """The same network fed ``scale * x + shift`` (per scalar): a net over data space."""
        scale = np.asarray(scale, np.float64)
        shift = np.asarray(shift, np.float64)
        nodes = [Node("input", [], self.d_in)]
        for nd in self.nodes[1:]:
            if 0 in nd.parents and nd.kind != "affine":
                raise ValueError("only affine nodes may read the input")
            if nd.kind != "affine" or 0 not in nd.parents:
                nodes.append(nd)
                continue
            mats, bias = [], nd.bias.astype(np.float64).copy()
            for p, m in zip(nd.parents, nd.mats):
                if p == 0:
                    m = np.eye(self.d_in) if m is None else m
                    bias = bias + m @ shift
                    m = m * scale[None, :]
                mats.append(m)
            nodes.append(Node("affine", list(nd.parents), nd.size, mats=mats, bias=bias))
        return Net(nodes, self.output, self.final)


# ----------------------------------------------------------------------------------------------
# interval bounds (batched over boxes) and the exact MILP of one box


def interval_bounds(net: Net, xl: np.ndarray, xu: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Plain interval arithmetic through every node, for boxes ``[S, D]``."""
    out = [(np.asarray(xl, np.float64), np.asarray(xu, np.float64))]
    for nd in net.nodes[1:]:
        if nd.kind == "affine":
            l = np.zeros(out[0][0].shape[:-1] + (nd.size,)) + nd.bias
            u = l.copy()
            for p, m in zip(nd.parents, nd.mats):
                pl, pu = out[p]
                if m is None:
                    l, u = l + pl, u + pu
                else:
                    mp, mn = np.maximum(m, 0), np.minimum(m, 0)
                    l = l + pl @ mp.T + pu @ mn.T
                    u = u + pu @ mp.T + pl @ mn.T
            out.append((l, u))
            continue
        pl, pu = out[nd.parents[0]]
        if nd.kind == "relu":
            out.append((np.maximum(pl, 0), np.maximum(pu, 0)))
        elif nd.kind == "leaky":
            a = nd.alpha
            out.append((np.where(pl >= 0, pl, a * pl), np.where(pu >= 0, pu, a * pu)))
        elif nd.kind == "clip":
            out.append((np.clip(pl, nd.lo, nd.hi), np.clip(pu, nd.lo, nd.hi)))
        elif nd.kind == "cast16":
            out.append((pl, pu))
        elif nd.kind == "sigmoid":
            out.append((0.5 * (1 + np.tanh(0.5 * pl)), 0.5 * (1 + np.tanh(0.5 * pu))))
        elif nd.kind == "tanh":
            out.append((np.tanh(pl), np.tanh(pu)))
        elif nd.kind == "maxpool":
            idx = nd.pool_idx
            vl = np.where(idx >= 0, pl[..., np.maximum(idx, 0)], -np.inf).max(-1)
            vu = np.where(idx >= 0, pu[..., np.maximum(idx, 0)], -np.inf).max(-1)
            out.append((vl, vu))
        else:
            raise ValueError(nd.kind)
    return out


def symbolic_bounds(net: Net, xl: np.ndarray, xu: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Any]]:
    """Bounds of every node for boxes ``[S, D]``: linear lower and upper functions of the input
    pushed forward (a DeepPoly-style relaxation without back-substitution), intersected with plain
    intervals. Returns the concrete bounds and the linear ones ``(A_l, c_l, A_u, c_u)`` per node.
    Much tighter than intervals when few inputs are free, which keeps the MILPs small."""
    xl = np.asarray(xl, np.float64)
    xu = np.asarray(xu, np.float64)
    S, D = xl.shape
    ib = interval_bounds(net, xl, xu)
    xp_, xn_ = xl, xu  # for concretising: min of c.x is c+ . xl + c- . xu

    def lower(A: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.einsum("snd,sd->sn", np.maximum(A, 0), xp_) + np.einsum("snd,sd->sn", np.minimum(A, 0), xn_) + c

    def upper(A: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.einsum("snd,sd->sn", np.maximum(A, 0), xn_) + np.einsum("snd,sd->sn", np.minimum(A, 0), xp_) + c

    eye = np.broadcast_to(np.eye(D), (S, D, D))
    lin: list[Any] = [(eye, np.zeros((S, D)), eye, np.zeros((S, D)))]
    out = [(xl, xu)]
    for j, nd in enumerate(net.nodes[1:], start=1):
        il, iu = ib[j]
        if nd.kind == "affine":
            Al = np.zeros((S, nd.size, D))
            Au = np.zeros((S, nd.size, D))
            cl = np.broadcast_to(nd.bias, (S, nd.size)).copy()
            cu = cl.copy()
            for p, m in zip(nd.parents, nd.mats):
                pAl, pcl, pAu, pcu = lin[p]
                if m is None:
                    Al, Au, cl, cu = Al + pAl, Au + pAu, cl + pcl, cu + pcu
                    continue
                mp, mn = np.maximum(m, 0), np.minimum(m, 0)
                Al = Al + np.einsum("on,snd->sod", mp, pAl) + np.einsum("on,snd->sod", mn, pAu)
                Au = Au + np.einsum("on,snd->sod", mp, pAu) + np.einsum("on,snd->sod", mn, pAl)
                cl = cl + pcl @ mp.T + pcu @ mn.T
                cu = cu + pcu @ mp.T + pcl @ mn.T
        elif nd.kind in ("relu", "leaky"):
            a = 0.0 if nd.kind == "relu" else nd.alpha
            pAl, pcl, pAu, pcu = lin[nd.parents[0]]
            l, u = out[nd.parents[0]]
            act = l >= 0
            dead = u <= 0
            unst = ~act & ~dead
            den = np.where(unst, u - l, 1.0)
            lam = np.where(unst, (u - a * l) / den, 0.0)  # upper: a*l + lam (v - l)
            alpha = np.where(u > -l, 1.0, a)  # lower: alpha * v
            su = np.where(act, 1.0, np.where(dead, a, lam))
            sl = np.where(act, 1.0, np.where(dead, a, alpha))
            Au = pAu * su[..., None]
            cu = pcu * su + np.where(unst, a * l - lam * l, 0.0)
            Al = pAl * sl[..., None]
            cl = pcl * sl
        elif nd.kind == "cast16":
            Al, cl, Au, cu = lin[nd.parents[0]]
        else:  # clip, maxpool, smooth: concrete interval bounds as constants
            Al = np.zeros((S, nd.size, D))
            Au = Al
            cl, cu = il, iu
            if nd.kind == "maxpool":
                # max >= the element with the largest lower bound
                pAl, pcl, _, _ = lin[nd.parents[0]]
                pl = out[nd.parents[0]][0]
                idx = nd.pool_idx
                cand = np.where(idx >= 0, pl[..., np.maximum(idx, 0)], -np.inf)  # [S, n, k]
                pick = idx[np.arange(nd.size)[None, :], np.argmax(cand, axis=-1)]  # [S, n]
                Al = np.take_along_axis(pAl, pick[..., None], axis=1)
                cl = np.take_along_axis(pcl, pick, axis=1)
        l = np.maximum(lower(Al, cl), il)
        u = np.minimum(upper(Au, cu), iu)
        u = np.maximum(u, l)
        lin.append((Al, cl, Au, cu))
        out.append((l, u))
    return out, lin


def symbolic_margin_lower_bounds(net: Net, xl: np.ndarray, xu: np.ndarray, ref: int) -> np.ndarray:
    """Lower bounds ``[S, K]`` of ``z_ref - z_k`` from the linear bounds of the output's parents."""
    bounds, lin = symbolic_bounds(net, xl, xu)
    nd = net.nodes[net.output]
    plain = margin_lower_bounds(net, bounds, ref)
    if nd.kind != "affine":
        return plain
    S = xl.shape[0]
    D = xl.shape[1]
    A = np.zeros((S, nd.size, D))
    c = np.broadcast_to(nd.bias[ref] - nd.bias, (S, nd.size)).copy()
    for p, m in zip(nd.parents, nd.mats):
        pAl, pcl, pAu, pcu = lin[p]
        m = np.eye(nd.size) if m is None else m
        dm = m[ref][None, :] - m
        dp, dn = np.maximum(dm, 0), np.minimum(dm, 0)
        A = A + np.einsum("kn,snd->skd", dp, pAl) + np.einsum("kn,snd->skd", dn, pAu)
        c = c + pcl @ dp.T + pcu @ dn.T
    lb = np.einsum("skd,sd->sk", np.maximum(A, 0), xl) + np.einsum("skd,sd->sk", np.minimum(A, 0), xu) + c
    lb = np.maximum(lb, plain)
    lb[..., ref] = np.inf
    return lb


def margin_lower_bounds(net: Net, bounds: list[tuple[np.ndarray, np.ndarray]], ref: int) -> np.ndarray:
    """Lower bounds ``[S, K]`` of ``z_ref - z_k`` from the bounds of the output node's parents
    (the difference of two rows, bounded as one row: much tighter than ``l_ref - u_k``)."""
    nd = net.nodes[net.output]
    if nd.kind != "affine":
        l, u = bounds[net.output]
        return l[..., [ref]] - u
    lb = np.zeros(bounds[0][0].shape[:-1] + (nd.size,)) + (nd.bias[ref] - nd.bias)
    for p, m in zip(nd.parents, nd.mats):
        pl, pu = bounds[p]
        m = np.eye(nd.size) if m is None else m
        dm = m[ref][None, :] - m  # [K, Dp]
        lb = lb + pl @ np.maximum(dm, 0).T + pu @ np.minimum(dm, 0).T
    lb[..., ref] = np.inf
    return lb


class BoxMilp:
    """The big-M MILP of ``net`` over the box ``[xl, xu]`` (data-space net), built once and
    solved for several objectives."""

    SLACK = 1e-5  # room around pinned neurons (HiGHS dislikes lb == ub rows it cannot presolve)

    def __init__(self, net: Net, xl: np.ndarray, xu: np.ndarray) -> None:
        from scipy.optimize import Bounds, LinearConstraint
        from scipy.sparse import coo_matrix

        self.net = net
        self.xl, self.xu = np.asarray(xl, np.float64), np.asarray(xu, np.float64)
        ib = [(l[0], u[0]) for l, u in symbolic_bounds(net, self.xl[None], self.xu[None])[0]]
        self.ib = ib
        lbs: list[np.ndarray] = []
        ubs: list[np.ndarray] = []
        ints: list[np.ndarray] = []
        n = [0]
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        clo: list[np.ndarray] = []
        chi: list[np.ndarray] = []
        nrow = [0]

        def var(size: int, lb: Any, ub: Any, integer: bool = False) -> np.ndarray:
            idx = np.arange(n[0], n[0] + size)
            n[0] += size
            lbs.append(np.broadcast_to(np.asarray(lb, float), (size,)).copy())
            ubs.append(np.broadcast_to(np.asarray(ub, float), (size,)).copy())
            ints.append(np.full(size, int(integer)))
            return idx

        def rows_of(r: np.ndarray, c: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
            """Constraints ``lo[i] <= sum_j A[i, j] x_j <= hi[i]`` given in local row numbers."""
            keep = v != 0.0  # explicit zeros upset HiGHS
            rows.append(r[keep] + nrow[0])
            cols.append(c[keep])
            vals.append(v[keep])
            clo.append(np.asarray(lo, float))
            chi.append(np.asarray(hi, float))
            nrow[0] += len(lo)

        x = var(net.d_in, self.xl, self.xu)
        var_of = [x]
        for j, nd in enumerate(net.nodes[1:], start=1):
            l, u = ib[j]
            if nd.kind == "affine":
                z = var(nd.size, l - self.SLACK, u + self.SLACK)
                r = [np.arange(nd.size)]
                c = [z]
                v = [np.ones(nd.size)]
                for p, m in zip(nd.parents, nd.mats):
                    if m is None:
                        r.append(np.arange(nd.size))
                        c.append(var_of[p])
                        v.append(-np.ones(nd.size))
                    else:
                        rr, cc = np.nonzero(m)
                        r.append(rr)
                        c.append(var_of[p][cc])
                        v.append(-m[rr, cc])
                rows_of(np.concatenate(r), np.concatenate(c), np.concatenate(v), nd.bias, nd.bias)
                var_of.append(z)
            elif nd.kind in ("relu", "leaky"):
                a = 0.0 if nd.kind == "relu" else nd.alpha
                pl, pu = ib[nd.parents[0]]
                var_of.append(self._relu(var, rows_of, var_of[nd.parents[0]], np.zeros(nd.size), pl, pu, a))
            elif nd.kind == "cast16":
                pl, pu = ib[nd.parents[0]]
                y = var(nd.size, pl - self.SLACK, pu + self.SLACK)
                k = np.arange(nd.size)
                rows_of(np.concatenate([k, k]), np.concatenate([y, var_of[nd.parents[0]]]),
                        np.concatenate([np.ones(nd.size), -np.ones(nd.size)]), np.zeros(nd.size), np.zeros(nd.size))
                var_of.append(y)
            elif nd.kind == "clip":
                # clip(v, a, b) = a + relu(v - a) - relu(v - b)
                pl, pu = ib[nd.parents[0]]
                src = var_of[nd.parents[0]]
                r1 = self._relu(var, rows_of, src, np.full(nd.size, -nd.lo), pl - nd.lo, pu - nd.lo, 0.0)
                r2 = self._relu(var, rows_of, src, np.full(nd.size, -nd.hi), pl - nd.hi, pu - nd.hi, 0.0)
                y = var(nd.size, l - self.SLACK, u + self.SLACK)
                k = np.arange(nd.size)
                rows_of(np.concatenate([k, k, k]), np.concatenate([y, r1, r2]),
                        np.concatenate([np.ones(nd.size), -np.ones(nd.size), np.ones(nd.size)]),
                        np.full(nd.size, nd.lo), np.full(nd.size, nd.lo))
                var_of.append(y)
            elif nd.kind == "maxpool":
                pl, pu = ib[nd.parents[0]]
                src = var_of[nd.parents[0]]
                y = var(nd.size, l - self.SLACK, u + self.SLACK)
                for r in range(nd.size):
                    win = [i for i in nd.pool_idx[r] if i >= 0]
                    win = [i for i in win if pu[i] >= l[r]]  # never the max: no selector needed
                    for i in win:  # y >= v_i
                        rows_of(np.array([0, 0]), np.array([y[r], src[i]]), np.array([1.0, -1.0]), np.zeros(1), np.full(1, np.inf))
                    if len(win) == 1:
                        rows_of(np.array([0, 0]), np.array([y[r], src[win[0]]]), np.array([1.0, -1.0]), np.zeros(1), np.zeros(1))
                        continue
                    q = var(len(win), 0.0, 1.0, integer=True)
                    for i, qi in zip(win, q):  # q_i = 1: y <= v_i
                        big = u[r] - pl[i] + self.SLACK
                        rows_of(np.array([0, 0, 0]), np.array([y[r], src[i], qi]), np.array([1.0, -1.0, big]),
                                np.full(1, -np.inf), np.full(1, big))
                    rows_of(np.zeros(len(q), int), q, np.ones(len(q)), np.ones(1), np.ones(1))
                var_of.append(y)
            else:
                raise ValueError(f"no MILP encoding for {nd.kind}")
        self.n_base = n[0]
        self.var_of = var_of
        self.out = var_of[net.output]
        self.lb = np.concatenate(lbs)
        self.ub = np.concatenate(ubs)
        self.integrality = np.concatenate(ints)
        A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow[0], n[0])).tocsr()
        self._Bounds, self._LinearConstraint = Bounds, LinearConstraint
        self.A, self.clo, self.chi = A, np.concatenate(clo), np.concatenate(chi)

    def _relu(self, var: Any, rows_of: Any, src: np.ndarray, const: np.ndarray, pl: np.ndarray, pu: np.ndarray, a: float) -> np.ndarray:
        """``y = leaky_a(src + const)`` given bounds ``[pl, pu]`` of ``src + const``."""
        size = len(src)
        y = var(size, np.minimum(np.where(pl >= 0, pl, a * pl), 0) - self.SLACK, np.maximum(pu, 0) + self.SLACK)
        for r in range(size):
            if pl[r] >= 0:  # y = s + c
                rows_of(np.array([0, 0]), np.array([y[r], src[r]]), np.array([1.0, -1.0]), np.full(1, const[r]), np.full(1, const[r]))
            elif pu[r] <= 0:  # y = a (s + c)
                rows_of(np.array([0, 0]), np.array([y[r], src[r]]), np.array([1.0, -a]), np.full(1, a * const[r]), np.full(1, a * const[r]))
            else:
                d = var(1, 0.0, 1.0, integer=True)[0]
                m1 = (a - 1.0) * pl[r]  # > 0
                m2 = (1.0 - a) * pu[r]  # > 0
                c = const[r]
                # y >= s + c ; y >= a (s + c)
                rows_of(np.array([0, 0]), np.array([y[r], src[r]]), np.array([1.0, -1.0]), np.full(1, c), np.full(1, np.inf))
                rows_of(np.array([0, 0]), np.array([y[r], src[r]]), np.array([1.0, -a]), np.full(1, a * c), np.full(1, np.inf))
                # d = 0: y <= (s + c) + m1 ; d = 1: y <= a (s + c) + m2
                rows_of(np.array([0, 0, 0]), np.array([y[r], src[r], d]), np.array([1.0, -1.0, m1]), np.full(1, -np.inf), np.full(1, c + m1))
                rows_of(np.array([0, 0, 0]), np.array([y[r], src[r], d]), np.array([1.0, -a, -m2]), np.full(1, -np.inf), np.full(1, a * c))
        return y

    def solve(self, terms: dict[int, float], maximin: tuple[int, int] | None = None,
              time_limit: float = 20.0) -> tuple[float, np.ndarray] | None:
        """Minimise ``sum_k terms[k] * z_k`` (or maximise ``min(z_a, z_b)`` for ``maximin=(a, b)``).
        Returns (the float64 objective recomputed at the point, the input point) or None."""
        from scipy.optimize import milp
        from scipy.sparse import coo_matrix, vstack

        nvar = self.n_base
        A, clo, chi = self.A, self.clo, self.chi
        lb, ub, integ = self.lb, self.ub, self.integrality
        c = np.zeros(nvar)
        if maximin is None:
            for k, w in terms.items():
                c[self.out[k]] += w
        else:
            s = nvar
            nvar += 1
            za, zb = self.out[maximin[0]], self.out[maximin[1]]
            extra = coo_matrix(([1.0, -1.0, 1.0, -1.0], ([0, 0, 1, 1], [s, za, s, zb])), shape=(2, nvar))
            A = vstack([_pad_cols(A, nvar), extra]).tocsr()
            clo = np.concatenate([clo, [-np.inf, -np.inf]])
            chi = np.concatenate([chi, [0.0, 0.0]])
            lo_s = min(self.ib[self.net.output][0][list(maximin)]) - 1.0
            hi_s = max(self.ib[self.net.output][1][list(maximin)]) + 1.0
            lb, ub, integ = np.append(lb, lo_s), np.append(ub, hi_s), np.append(integ, 0)
            c = np.zeros(nvar)
            c[s] = -1.0
        res = None
        for presolve in (True, False):  # HiGHS occasionally reports a solve error with presolve
            with _Quiet():
                res = milp(c, integrality=integ, bounds=self._Bounds(lb, ub),
                           constraints=self._LinearConstraint(A, clo, chi),
                           options={"time_limit": time_limit, "mip_rel_gap": 1e-9, "presolve": presolve, "disp": False})
            if res.x is not None:
                break
        if res is None or res.x is None:
            return None
        x = np.clip(res.x[self.var_of[0]], self.xl, self.xu)
        z = self.net.forward(x[None])[0]
        if maximin is None:
            val = float(sum(w * z[k] for k, w in terms.items()))
        else:
            val = float(min(z[maximin[0]], z[maximin[1]]))
        return val, x


class _Quiet:
    """Silence file descriptor 1 around a HiGHS call (it prints debugging lines from C++)."""

    def __enter__(self) -> None:
        import os
        import sys

        sys.stdout.flush()
        self.saved = os.dup(1)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)

    def __exit__(self, *exc: Any) -> None:
        import os

        os.dup2(self.saved, 1)
        os.close(self.saved)
        os.close(self.null)


def _pad_cols(A: Any, ncols: int) -> Any:
    from scipy.sparse import csr_matrix

    A = A.tocsr()
    return csr_matrix((A.data, A.indices, A.indptr), shape=(A.shape[0], ncols))


# ----------------------------------------------------------------------------------------------
# the L0 set


def _chunked_margin_bounds(net: Net, bl: np.ndarray, bu: np.ndarray, ref: int, chunk: int = 128) -> np.ndarray:
    return np.concatenate([symbolic_margin_lower_bounds(net, bl[s : s + chunk], bu[s : s + chunk], ref)
                           for s in range(0, len(bl), chunk)])


def unit_ids(layout: str, sample_shape: Sequence[int], channels: int | None = None, unit: str = "pixel") -> np.ndarray:
    """For each scalar of the flattened model-layout input, the unit it belongs to."""
    shape = tuple(int(s) for s in sample_shape)
    d = int(np.prod(shape))
    if unit == "feature":
        return np.arange(d)
    if unit != "pixel":
        raise ValueError(f"unit must be pixel or feature, got {unit!r}")
    if layout == "nchw":
        c, h, w = shape
        return np.tile(np.arange(h * w), c)
    if layout == "nhwc":
        h, w, c = shape
        return np.repeat(np.arange(h * w), c)
    if layout == "flat":
        c = channels or 1
        return np.arange(d) // c
    raise ValueError(f"unknown layout {layout!r}")


def channel_ids(layout: str, sample_shape: Sequence[int], channels: int | None = None) -> np.ndarray:
    shape = tuple(int(s) for s in sample_shape)
    d = int(np.prod(shape))
    if layout == "nchw":
        c, h, w = shape
        return np.repeat(np.arange(c), h * w)
    if layout == "nhwc":
        return np.tile(np.arange(shape[-1]), d // shape[-1])
    return np.arange(d) % (channels or 1)


def exact_min_margins(net: Net, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, units: np.ndarray, ref: int, t: int,
                      *, exact: bool = True, grid_levels: int = 5, milp_time: float = 20.0) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """``min (z_ref - z_k)`` of the float64 data-space ``net`` for every class over the set of
    inputs with at most ``t`` changed units (each box ``[lo, hi]`` must hold ``x0``).

    Every t-subset is searched on a grid first (an incumbent per class); then each subset whose
    interval bound can still beat the incumbent is solved exactly by MILP (PWL nets). With
    ``exact=False`` (or a smooth net) it is the grid minimum (``grid_levels ** 2`` points per
    subset): an upper bound of the true one.
    Returns the per-class minima (+inf at ref) and the points where they are reached."""
    x0 = np.asarray(x0, np.float64)
    lo = np.broadcast_to(np.asarray(lo, np.float64), x0.shape)
    hi = np.broadcast_to(np.asarray(hi, np.float64), x0.shape)
    n_units = int(units.max()) + 1
    K = net.n_classes
    subsets = list(itertools.combinations(range(n_units), min(t, n_units)))
    best = np.full(K, np.inf)
    arg: list[np.ndarray | None] = [None] * K
    boxes_l = np.repeat(x0[None], len(subsets), axis=0)
    boxes_u = boxes_l.copy()
    for i, s in enumerate(subsets):
        sc = np.isin(units, s)
        boxes_l[i, sc], boxes_u[i, sc] = lo[sc], hi[sc]
    for i, s in enumerate(subsets):
        sc = np.nonzero(np.isin(units, s))[0]
        levels = max(3, int(np.floor(grid_levels ** (2.0 / sc.size) + 1e-9)))
        g = np.linspace(0.0, 1.0, levels)
        combo = np.indices((levels,) * sc.size).reshape(sc.size, -1).T
        pts = np.repeat(x0[None], len(combo), axis=0)
        pts[:, sc] = lo[sc] + g[combo] * (hi[sc] - lo[sc])
        pts = np.concatenate([pts, x0[None]])
        z = net.forward(pts)
        diff = z[:, [ref]] - z
        j = np.argmin(diff, axis=0)
        for k in range(K):
            if k != ref and diff[j[k], k] < best[k]:
                best[k], arg[k] = diff[j[k], k], pts[j[k]]
    if exact and net.milp_ok:
        lbm = _chunked_margin_bounds(net, boxes_l, boxes_u, ref)  # [S, K]
        for i in np.argsort(lbm.min(axis=1)):
            todo = [k for k in range(K) if k != ref and lbm[i, k] < best[k]]
            if not todo:
                continue
            milp = BoxMilp(net, boxes_l[i], boxes_u[i])
            for k in todo:
                r = milp.solve({ref: 1.0, k: -1.0}, time_limit=milp_time)
                if r is not None and r[0] < best[k]:
                    best[k], arg[k] = r
    best[ref] = np.inf
    return best, arg


# ----------------------------------------------------------------------------------------------
# the oracle


@dataclass
class Flip:
    """A verified adversarial input: data space, model layout, with what onnxruntime says."""

    x: np.ndarray  # [*sample_shape] float32, data space
    units: np.ndarray  # the changed units
    outputs: np.ndarray  # onnxruntime's output row
    label: int  # its argmax
    method: str  # grid | local | milp | nudge | ...

    def describe(self) -> str:
        return f"{self.units.size} changed units {self.units.tolist()} -> class {self.label} ({self.method}); outputs {self.outputs.tolist()}"


@dataclass
class Report:
    """What one search did: the flip (or None), and which searches ran."""

    flip: Flip | None
    grid_points: int = 0
    milps: int = 0
    subsets_pruned: int = 0
    used_milp: bool = False
    seconds: float = 0.0


class Oracle:
    """Searches for inputs with at most ``t`` changed units that flip onnxruntime's top-1 class.

    ``x`` arguments are data-space samples in the model's per-sample layout. ``net`` (optional) is
    the network's float64 weights over the *model* input (as the graph sees it); the oracle maps
    it to data space itself with the outside normalisation."""

    def __init__(self, model_path: str | Path, *, layout: str, lo: float, hi: float, channels: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, unit: str = "pixel",
                 net: Net | None = None, slack: float | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.sample_shape = tuple(int(d) for d in inp.shape[1:])
        self.fixed_batch = isinstance(inp.shape[0], int)
        self.layout, self.unit = layout, unit
        self.lo, self.hi = float(lo), float(hi)
        self.d = int(np.prod(self.sample_shape))
        self.units = unit_ids(layout, self.sample_shape, channels, unit)
        self.n_units = int(self.units.max()) + 1
        ch = channel_ids(layout, self.sample_shape, channels)
        n_ch = int(ch.max()) + 1
        self.normalised = mean is not None or std is not None
        m = np.zeros(n_ch, np.float32) if mean is None else np.broadcast_to(np.asarray(mean, np.float32), (n_ch,))
        s = np.ones(n_ch, np.float32) if std is None else np.broadcast_to(np.asarray(std, np.float32), (n_ch,))
        self.mean, self.std = m[ch].astype(np.float32), s[ch].astype(np.float32)
        self.slack = slack
        self.net = None
        if net is not None:
            scale = 1.0 / self.std.astype(np.float64)
            self.net = net.with_input_affine(scale, -self.mean.astype(np.float64) * scale) if self.normalised else net

    # -- onnxruntime, the reference semantics ----------------------------------------------------
    def model_input(self, x: np.ndarray) -> np.ndarray:
        """Data space ``[N, D]`` to the model's input, as float32 ``(x - mean) / std``."""
        x = np.asarray(x, np.float32).reshape(-1, self.d)
        if self.normalised:
            x = (x - self.mean) / self.std
        return x.reshape((-1,) + self.sample_shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime's float32 outputs ``[N, K]`` for data-space inputs ``[N, D]``."""
        xm = self.model_input(x)
        step = 1 if self.fixed_batch else BATCH
        outs = [self.sess.run(None, {self.input_name: xm[s : s + step]})[0] for s in range(0, len(xm), step)]
        out = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
        return np.asarray(out, np.float32).reshape(len(xm), -1)

    @staticmethod
    def flips(out: np.ndarray, ref: int) -> np.ndarray:
        return (np.argmax(out, axis=1) != ref) & np.all(np.isfinite(out), axis=1)

    @staticmethod
    def margins(out: np.ndarray, ref: int) -> np.ndarray:
        o = out.astype(np.float64)
        return o[:, ref] - np.delete(o, ref, axis=1).max(axis=1)

    def changed_units(self, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
        diff = np.asarray(x, np.float32).reshape(-1) != np.asarray(x0, np.float32).reshape(-1)
        return np.unique(self.units[diff])

    def verify(self, x: np.ndarray, x0: np.ndarray, ref: int, t: int, method: str) -> Flip | None:
        """The flip at ``x``, re-run alone, its changed units recounted; None when it is not one."""
        x = np.asarray(x, np.float32).reshape(-1)
        x0 = np.asarray(x0, np.float32).reshape(-1)
        changed = self.changed_units(x, x0)
        if changed.size > t:
            return None
        sc = np.isin(self.units, changed)
        if np.any(x[sc] < np.float32(self.lo)) or np.any(x[sc] > np.float32(self.hi)) or not np.all(np.isfinite(x)):
            return None
        out = self.run(x[None])
        if not self.flips(out, ref)[0]:
            return None
        return Flip(x.reshape(self.sample_shape).copy(), changed, out[0], int(np.argmax(out[0])), method)

    def _first_flip(self, pts: np.ndarray, x0: np.ndarray, ref: int, t: int, method: str) -> tuple[Flip | None, np.ndarray]:
        pts = np.clip(np.asarray(pts, np.float32), np.float32(self.lo), np.float32(self.hi))
        out = self.run(pts)
        hit = np.nonzero(self.flips(out, ref))[0]
        for i in hit[:8]:
            f = self.verify(pts[i], x0, ref, t, method)
            if f is not None:
                return f, out
        return None, out

    # -- the search ------------------------------------------------------------------------------
    def find_flip(self, x0: np.ndarray, ref: int, t: int, *, grid_budget: int = 60_000, milp: bool = True,
                  refine: int = 6, milp_time: float = 20.0) -> Report:
        """Search every t-subset of units for a flipping input (see the module docstring)."""
        started = time.perf_counter()
        x0 = np.asarray(x0, np.float32).reshape(-1)
        rep = Report(None)
        clean = self.run(x0[None])
        if self.flips(clean, ref)[0]:
            rep.flip = Flip(x0.reshape(self.sample_shape), np.zeros(0, np.int64), clean[0], int(np.argmax(clean[0])), "clean")
            return rep
        t = min(t, self.n_units)
        subsets = list(itertools.combinations(range(self.n_units), t))
        scal = [np.nonzero(np.isin(self.units, s))[0] for s in subsets]
        # (a) grid
        n_sc = max(len(s) for s in scal)
        per = max(2.0, grid_budget / max(1, len(subsets)))
        levels = max(2, int(math.floor(per ** (1.0 / n_sc) + 1e-9)) - 1)
        lin = np.linspace(self.lo, self.hi, levels).astype(np.float32)
        sub_min = np.full(len(subsets), np.inf)
        best_pts: list[tuple[float, int, np.ndarray]] = []
        chunk: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        combos: dict[int, np.ndarray] = {}

        def flush() -> Flip | None:
            if not chunk:
                return None
            pts = np.concatenate(chunk)
            own = np.concatenate(owners)
            chunk.clear()
            owners.clear()
            rep.grid_points += len(pts)
            f, out = self._first_flip(pts, x0, ref, t, "grid")
            if f is not None:
                return f
            m = self.margins(out, ref)
            np.minimum.at(sub_min, own, m)
            for i in np.argsort(m)[:refine]:
                best_pts.append((float(m[i]), int(own[i]), pts[i]))
            best_pts.sort(key=lambda e: e[0])
            del best_pts[refine:]
            return None

        rows = 0
        for si, sc in enumerate(scal):
            n = sc.size
            if n not in combos:
                combos[n] = np.indices((levels + 1,) * n).reshape(n, -1).T
            lev = np.concatenate([np.broadcast_to(lin, (n, levels)), x0[sc][:, None]], axis=1)  # [n, L+1]
            vals = lev[np.arange(n)[None, :], combos[n]]
            pts = np.repeat(x0[None], len(vals), axis=0)
            pts[:, sc] = vals
            chunk.append(pts)
            owners.append(np.full(len(pts), si))
            rows += len(pts)
            if rows >= BATCH:
                rows = 0
                f = flush()
                if f is not None:
                    rep.flip = f
                    rep.seconds = time.perf_counter() - started
                    return rep
        f = flush()
        if f is not None:
            rep.flip = f
            rep.seconds = time.perf_counter() - started
            return rep
        # local refinement of the lowest grid points: shrinking random steps inside their subset
        rng = np.random.default_rng(0)
        width = self.hi - self.lo
        for m0, si, p in best_pts:
            sc = scal[si]
            cur, cur_m = p.copy(), m0
            for radius in (0.25, 0.08, 0.02, 5e-3, 1e-3, 1e-4, 1e-5):
                cand = np.repeat(cur[None], 64, axis=0)
                cand[:, sc] += (rng.uniform(-1, 1, (64, sc.size)) * radius * width).astype(np.float32)
                cand = np.clip(cand, np.float32(self.lo), np.float32(self.hi))
                rep.grid_points += len(cand)
                f, out = self._first_flip(cand, x0, ref, t, "local")
                if f is not None:
                    rep.flip = f
                    rep.seconds = time.perf_counter() - started
                    return rep
                m = self.margins(out, ref)
                i = int(np.argmin(m))
                if m[i] < cur_m:
                    cur, cur_m = cand[i], m[i]
        # (b) MILP per subset and competing class, on the float64 weights
        if milp and self.net is not None and self.net.milp_ok:
            rep.used_milp = True
            f = self._milp_search(x0, ref, t, subsets, scal, rep, milp_time)
            if f is not None:
                rep.flip = f
        rep.seconds = time.perf_counter() - started
        return rep

    def _milp_search(self, x0: np.ndarray, ref: int, t: int, subsets: list[tuple[int, ...]], scal: list[np.ndarray],
                     rep: Report, milp_time: float) -> Flip | None:
        net = self.net
        assert net is not None
        x64 = x0.astype(np.float64)
        z0 = net.forward(x64[None])[0]
        slack = self.slack if self.slack is not None else 1e-4 * (1.0 + float(np.max(np.abs(z0))))
        S = len(subsets)
        bl = np.repeat(x64[None], S, axis=0)
        bu = bl.copy()
        for i, sc in enumerate(scal):
            bl[i, sc], bu[i, sc] = self.lo, self.hi
        lbm = _chunked_margin_bounds(net, bl, bu, ref)  # [S, K]
        K = net.n_classes
        sat = net.final == "sigmoid"
        if sat:  # float32 sigmoid rounds to 1 above about 16.6: both logits must get near that
            zu = np.concatenate([symbolic_bounds(net, bl[s : s + 128], bu[s : s + 128])[0][net.output][1]
                                 for s in range(0, S, 128)])
        for i in np.argsort(lbm.min(axis=1)):
            todo = [k for k in range(K) if k != ref and lbm[i, k] <= slack]
            tie = [k for k in range(ref) if min(zu[i, k], zu[i, ref]) >= SIGMOID_SATURATION] if sat else []
            if not todo and not tie:
                rep.subsets_pruned += 1
                continue
            milp = BoxMilp(net, bl[i], bu[i])
            sc = scal[i]
            for k in todo:
                rep.milps += 1
                r = milp.solve({ref: 1.0, k: -1.0}, time_limit=milp_time)
                if r is None:
                    continue
                f = self._around(r[1], x0, ref, k, t, sc, "milp")
                if f is not None:
                    return f
            for k in tie:
                rep.milps += 1
                r = milp.solve({}, maximin=(k, ref), time_limit=milp_time)
                if r is None:
                    continue
                f = self._around(r[1], x0, ref, k, t, sc, "milp-saturation")
                if f is not None:
                    return f
        return None

    def _around(self, xs: np.ndarray, x0: np.ndarray, ref: int, k: int, t: int, sc: np.ndarray, method: str) -> Flip | None:
        """The MILP's point, and float32 points next to it and to where the float64 margin of
        class k crosses zero on the segment from x0, run through onnxruntime."""
        net = self.net
        assert net is not None
        lo, hi = self.lo, self.hi
        xs = np.clip(xs, lo, hi)
        x64 = x0.astype(np.float64)

        def marg(p: np.ndarray) -> np.ndarray:
            z = net.forward(np.atleast_2d(p))
            return z[:, ref] - z[:, k]

        pts = [xs]
        m_s, m_0 = float(marg(xs)[0]), float(marg(x64)[0])
        if m_s < 0 <= m_0:
            a, b = 0.0, 1.0  # margin >= 0 at a, < 0 at b
            for _ in range(60):
                mid = 0.5 * (a + b)
                if marg(x64 + mid * (xs - x64))[0] >= 0:
                    a = mid
                else:
                    b = mid
            for s in np.concatenate([np.linspace(a - 1e-6, b + 1e-6, 9), [a, b]]):
                pts.append(x64 + np.clip(s, 0, 1) * (xs - x64))
        base = np.array(pts)
        # the direction that lowers the margin, per free scalar (one-sided differences: kinks)
        h = 1e-6 * (hi - lo)
        direction = np.zeros(x0.size)
        for j in sc:
            e = np.zeros(x0.size)
            e[j] = h
            up, down = marg(np.clip(xs + e, lo, hi))[0], marg(np.clip(xs - e, lo, hi))[0]
            direction[j] = -1.0 if down < up else 1.0
        out = [base.astype(np.float32)]
        b32 = base.astype(np.float32)
        sp = np.spacing(np.abs(b32)).astype(np.float32)
        for mult in (1, 2, 3, 4, 8, 16, 64, 256, 4096):
            out.append(b32 + (direction * mult).astype(np.float32) * sp)
        for mult in (1, 2, 4):
            out.append(b32 - (direction * mult).astype(np.float32) * sp)
        rng = np.random.default_rng(k)
        jit = np.zeros((32, x0.size), np.float32)
        jit[:, sc] = rng.integers(-4, 5, (32, sc.size))
        out.append(b32[:1] + jit * sp[:1])
        for rel in (1e-6, 1e-5, 1e-4):
            noise = np.zeros((16, x0.size), np.float32)
            noise[:, sc] = rng.uniform(-rel, rel, (16, sc.size)) * (hi - lo)
            out.append(b32[:1] + noise)
        cand = np.concatenate(out)
        # scalars outside the subset stay exactly at x0
        keep = np.ones(x0.size, bool)
        keep[sc] = False
        cand[:, keep] = x0[keep]
        f, _ = self._first_flip(cand, x0, ref, t, method)
        return f
