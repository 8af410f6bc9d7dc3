"""Linear bound propagation over an L0 input set (NumPy, float64).

Two kinds of input sets, both batched over B problems ("domains"):

``Domains`` — the generalised L0 set: per domain a box ``[lo, hi]`` for every scalar (fixed
scalars have ``lo = hi = x0``), a set of FORCED pixels (free in their box, always counted) and a
budget ``k`` of further pixels that may change among the others. ``k = t`` with nothing forced is
the plain L0 ball. Bounds: interval arithmetic plus backward CROWN for intermediate neurons and the
specification, concretised with the top-k rule.

``Boxes`` — a box where only a few scalars ``S`` (F of them) are free and everything else equals
``x0``: the leaves of the search (one pixel free for t = 1). Bounds: forward-mode linear bounds in
the F free scalars (cheap: F + 1 rows per neuron) for the intermediate neurons, and backward CROWN
for the specification, with the input layer restricted to the free columns.

Both are sound over-approximations: every bound holds for every point of the set, for the
network evaluated in float32. Rounding enters as a bounded perturbation: every linear node's
float32 value is ``W v + b + d`` with ``|d| <= eps_j`` (``Problem.eps``, from the float32 model of
``certify/float32.py`` and the magnitudes the node's inputs reach over the L0 ball), Sigmoid and
Tanh add their measured allowance, and a dropped final Softmax costs ``Problem.final_slack`` off
every margin. ``Problem.prepare_float32(t)`` sets these from the ball of size ``t``; every box and
domain searched afterwards lies inside that ball, so the same ``eps`` holds for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from l0tre_core.certify import float32
from l0tre_core.certify.network import Network, Node, apply_mat, back_mat, cols_of, rows_of
from l0tre_core.certify.ops.activation import PoolRelax, nonlinear_interval, pool_relax, relax

_CHUNK = 6_000_000  # floats in one [B, R, D] block


# ----------------------------------------------------------------------------------------------
# the problem: network + clean input + pixel structure


class Problem:
    def __init__(self, net: Network, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, pixel: np.ndarray, n_pixels: int) -> None:
        self.net = net
        self.x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        self.lo = np.asarray(lo, dtype=np.float64).reshape(-1)
        self.hi = np.asarray(hi, dtype=np.float64).reshape(-1)
        self.pixel = np.asarray(pixel, dtype=np.int64).reshape(-1)
        self.P = int(n_pixels)
        d = self.x0.size
        if not (self.lo.size == self.hi.size == self.pixel.size == d == net.n_inputs):
            raise ValueError("input set size does not match the network input")
        if (self.lo > self.hi).any():
            raise ValueError("lo > hi in the input set")
        if self.pixel.min(initial=0) < 0 or self.pixel.max(initial=0) >= self.P:
            raise ValueError("pixel index out of range")
        counts = np.bincount(self.pixel, minlength=self.P)
        self.counts = counts
        self._mode = "generic"
        if np.array_equal(self.pixel, np.arange(d)) and self.P == d:
            self._mode = "identity"
        elif counts.min() == counts.max() and counts[0] > 0:
            c = int(counts[0])
            if np.array_equal(self.pixel, np.tile(np.arange(self.P), c)):
                self._mode = "cp"  # channel-major (NCHW)
                self._c = c
            elif np.array_equal(self.pixel, np.repeat(np.arange(self.P), c)):
                self._mode = "pc"  # pixel-major (NHWC, interleaved)
                self._c = c
            else:
                self._mode = "perm"
                self._c = c
                self._perm = np.argsort(self.pixel, kind="stable")
        if self._mode == "generic":
            self._perm = np.argsort(self.pixel, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._starts = starts
            self._empty = counts == 0
        # scalars of each pixel (padded with -1)
        cmax = int(counts.max(initial=0))
        self.pixel_scalars = np.full((self.P, max(cmax, 1)), -1, dtype=np.int64)
        order = np.argsort(self.pixel, kind="stable")
        pos = np.zeros(self.P, dtype=np.int64)
        for s in order:
            p = self.pixel[s]
            self.pixel_scalars[p, pos[p]] = s
            pos[p] += 1
        self.scalar_mask = self.pixel_scalars >= 0
        # float32 rounding per node (None: exact float64 arithmetic, before prepare_float32)
        self.eps: list[np.ndarray | None] | None = None
        self.final_slack = 0.0
        self.exact_arithmetic = False  # set while measuring what the float32 terms cost

    def rounding(self, j: int) -> np.ndarray | None:
        """``eps_j`` of linear node ``j``, or None."""
        if self.eps is None or self.exact_arithmetic:
            return None
        return self.eps[j]

    def prepare_float32(self, t: int) -> list[Any]:
        """Float32 rounding bounds from the magnitudes of the L0 ball of size ``t``; returns the
        ball's intermediate bounds (with them)."""
        self.eps = [None] * len(self.net.nodes)
        self.final_slack = 0.0
        ball = Domains.ball(self, t)
        bounds = intermediate_bounds(self, ball, set_eps=True)
        if self.net.final is not None:
            mags = float32.magnitudes(bounds)
            self.final_slack = float32.FINAL_ALLOWANCE + float32.SAFETY * 4 * float32.U * float(
                float32.output_magnitude(self.net, mags).max())
        return bounds

    def input_magnitude(self, nd: Node, i: int, t: int) -> np.ndarray:
        """``max |W_i| |x|`` over the ball of size ``t`` (x0 with at most t pixels changed): the
        clean part plus, per row, the ``t`` largest per-pixel increases."""
        w = nd.mats[i]
        top = np.maximum(np.maximum(np.abs(self.lo), np.abs(self.hi)) - np.abs(self.x0), 0.0)
        base = apply_mat(np.abs(self.x0)[None], nd.mat_abs(i))[0]
        if t <= 0:
            return base
        if w is None:
            return base + top
        if isinstance(w, np.ndarray):
            inc = self.to_pixels(np.abs(w) * top[None, :])  # [R, P]
            k = min(t, inc.shape[1])
            part = np.partition(inc, inc.shape[1] - k, axis=1)[:, inc.shape[1] - k:] if k < inc.shape[1] else inc
            return base + part.sum(axis=1)
        # a structured map: t times the largest weight of the row times the largest increases
        per_pixel = self.to_pixels(top[None, :])[0]
        return base + w.row_abs_max() * float(np.sort(per_pixel)[-t:].sum())

    def input_term(self, j: int, i: int) -> np.ndarray:
        """``W x0`` for parent ``i`` (the input) of node ``j`` (cached)."""
        key = (j, i)
        cache = self.__dict__.setdefault("_input_terms", {})
        if key not in cache:
            w = self.net.nodes[j].mats[i]
            cache[key] = apply_mat(self.x0[None], w)[0].copy()
        return cache[key]

    def to_pixels(self, d: np.ndarray) -> np.ndarray:
        """``[..., D] -> [..., P]``: sum of the scalars of each pixel."""
        if self._mode == "identity":
            return d
        lead = d.shape[:-1]
        if self._mode == "cp":
            return d.reshape(lead + (self._c, self.P)).sum(axis=-2)
        if self._mode == "pc":
            return d.reshape(lead + (self.P, self._c)).sum(axis=-1)
        if self._mode == "perm":
            return d[..., self._perm].reshape(lead + (self.P, self._c)).sum(axis=-1)
        dd = d[..., self._perm]
        out = np.add.reduceat(dd, self._starts, axis=-1) if dd.shape[-1] else np.zeros(lead + (self.P,))
        if self._empty.any():
            out[..., self._empty] = 0.0
        return out


# ----------------------------------------------------------------------------------------------
# generalised L0 domains


@dataclass
class Domains:
    lo: np.ndarray  # [B, D]
    hi: np.ndarray  # [B, D]
    forced: np.ndarray  # [B, P] bool
    budget: np.ndarray  # [B] int

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def take(self, idx: Any) -> "Domains":
        return Domains(self.lo[idx], self.hi[idx], self.forced[idx], self.budget[idx])

    @staticmethod
    def ball(prob: Problem, t: int) -> "Domains":
        return Domains(prob.lo[None].copy(), prob.hi[None].copy(), np.zeros((1, prob.P), bool), np.array([t], dtype=np.int64))

    @staticmethod
    def concat(parts: list["Domains"]) -> "Domains":
        return Domains(
            np.concatenate([p.lo for p in parts]),
            np.concatenate([p.hi for p in parts]),
            np.concatenate([p.forced for p in parts]),
            np.concatenate([p.budget for p in parts]),
        )


def pixel_terms(prob: Problem, dom: Domains, a: np.ndarray) -> np.ndarray:
    """``d_p`` of section 1: per pixel, the least value ``a . (x - x0)`` takes on its box. [B,R,P]"""
    dlo = (dom.lo - prob.x0)[:, None, :]
    dhi = (dom.hi - prob.x0)[:, None, :]
    return prob.to_pixels(np.minimum(a * dlo, a * dhi))


def concretize(prob: Problem, dom: Domains, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Lower bound of ``a . x + c`` over each domain: ``a [B', R, D]``, ``c [B', R]`` -> ``[B, R]``."""
    b = len(dom)
    a = np.broadcast_to(a, (b,) + a.shape[1:])
    base = a @ prob.x0 + c
    dp = pixel_terms(prob, dom, a)
    forced = dom.forced[:, None, :]
    total = base + np.where(forced, dp, 0.0).sum(axis=-1)
    kmax = int(dom.budget.max(initial=0))
    if kmax > 0:
        others = np.where(forced, 0.0, np.minimum(dp, 0.0))
        p = others.shape[-1]
        k = min(kmax, p)
        part = np.partition(others, k - 1, axis=-1)[..., :k] if k < p else others
        part = np.sort(part, axis=-1)
        cs = np.cumsum(part, axis=-1)
        kk = np.minimum(dom.budget, k)
        pick = np.where(kk > 0, kk - 1, 0)
        sel = np.take_along_axis(cs, np.broadcast_to(pick[:, None, None], cs.shape[:2] + (1,)), axis=-1)[..., 0]
        total = total + np.where(kk[:, None] > 0, sel, 0.0)
    return total


# ----------------------------------------------------------------------------------------------
# backward CROWN


@dataclass
class BoxInput:
    """Restrict the input to ``x0`` plus free scalars ``S [B, F]`` moving by ``delta`` in a box."""

    S: np.ndarray  # [B, F] scalar indices (padding: index 0 with zero width)
    dlo: np.ndarray  # [B, F]
    dhi: np.ndarray  # [B, F]


class _Relax:
    """Per-node relaxations for one set of intermediate bounds."""

    def __init__(self, net: Network, bounds: list[Any]) -> None:
        self.net = net
        self.bounds = bounds
        self.cache: dict[int, Any] = {}

    def get(self, j: int) -> Any:
        if j not in self.cache:
            nd = self.net.nodes[j]
            l, u = self.bounds[nd.parents[0]]
            self.cache[j] = pool_relax(nd, l, u) if nd.kind == "maxpool" else relax(nd, l, u)
        return self.cache[j]


def _scatter_rows(a: np.ndarray, istar: np.ndarray, size: int) -> np.ndarray:
    """``out[b, r, istar[b, j]] += a[b, r, j]``."""
    b, r, dout = a.shape
    flat = (np.arange(b)[:, None, None] * r + np.arange(r)[None, :, None]) * size + istar[:, None, :]
    out = np.bincount(flat.reshape(-1), weights=a.reshape(-1), minlength=b * r * size)
    return out.reshape(b, r, size)


def backward(
    prob: Problem,
    rx: _Relax,
    start: int,
    a_start: np.ndarray | None,
    c_start: np.ndarray | None,
    n_dom: int,
    *,
    select: tuple[np.ndarray, np.ndarray] | None = None,
    dom: Domains | None = None,
    box: BoxInput | None = None,
    want_input: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lower bound of rows over node ``start``'s values, by backward substitution to the input.

    The rows are ``a_start [B' or 1, R, D_start]`` (+ ``c_start``) or, for a linear ``start``,
    ``select = (idx, sign)``: ``sign * value[idx]``. Returns ``[B, R]`` (and the input
    coefficients ``[B, R, D]`` when ``want_input``).
    """
    net = prob.net
    nodes = net.nodes
    A: dict[int, np.ndarray] = {}
    if select is not None:
        nd = nodes[start]
        idx, sign = select
        c = (sign * nd.bias[idx])[None, :]
        for p, w in zip(nd.parents, nd.mats):
            m = sign[:, None] * rows_of(w, idx, nodes[p].size)
            A[p] = A[p] + m[None] if p in A else m[None]
        top = start - 1
    else:
        assert a_start is not None
        A[start] = a_start
        c = np.zeros(a_start.shape[:2]) if c_start is None else c_start
        top = start
    a_free: np.ndarray | None = None  # box mode: coefficients of delta [B, R, F]
    for j in range(top, 0, -1):
        if j not in A:
            continue
        a = A.pop(j)
        nd = nodes[j]
        if nd.kind == "linear":
            c = c + a @ nd.bias
            eps = prob.rounding(j)
            if eps is not None:
                c = c - np.abs(a) @ eps
            for p, w in zip(nd.parents, nd.mats):
                if p == 0 and box is not None:
                    c = c + a @ prob.input_term(j, nd.parents.index(p))
                    if w is None:
                        cols = np.take_along_axis(np.broadcast_to(a, (n_dom,) + a.shape[1:]), box.S[:, None, :], axis=2)
                    else:
                        ws = cols_of(w, box.S)  # [Dj, B, F]
                        cols = np.einsum("brd,dbf->brf", np.broadcast_to(a, (n_dom,) + a.shape[1:]), ws)
                    a_free = cols if a_free is None else a_free + cols
                    continue
                contrib = back_mat(a, w)
                A[p] = A[p] + contrib if p in A else contrib
        elif nd.kind == "maxpool":
            pr: PoolRelax = rx.get(j)
            ab = np.broadcast_to(a, (n_dom,) + a.shape[1:])
            pos = np.maximum(ab, 0.0)
            neg = np.minimum(ab, 0.0)
            ex = pr.exact[:, None, :]
            coef = pos + np.where(ex, neg, 0.0)
            c = c + (np.where(ex, 0.0, neg) * pr.ub[:, None, :]).sum(axis=-1)
            p = nd.parents[0]
            contrib = _scatter_rows(coef, pr.istar, nodes[p].size)
            A[p] = A[p] + contrib if p in A else contrib
        else:
            sl, bl, su, bu = rx.get(j)
            ab = np.broadcast_to(a, (n_dom,) + a.shape[1:])
            pos = np.maximum(ab, 0.0)
            neg = np.minimum(ab, 0.0)
            contrib = pos * sl[:, None, :] + neg * su[:, None, :]
            c = c + np.einsum("brd,bd->br", pos, bl) + np.einsum("brd,bd->br", neg, bu)
            p = nd.parents[0]
            A[p] = A[p] + contrib if p in A else contrib
    if box is not None:
        assert a_free is not None or 0 not in A
        c = np.broadcast_to(c, (n_dom,) + c.shape[1:])
        if a_free is None:
            return c.copy(), None
        val = c + np.minimum(a_free * box.dlo[:, None, :], a_free * box.dhi[:, None, :]).sum(axis=-1)
        return val, None
    assert dom is not None
    a_in = A.get(0)
    if a_in is None:
        return np.broadcast_to(c, (n_dom,) + c.shape[1:]).copy(), None
    lb = concretize(prob, dom, a_in, c)
    return lb, (np.broadcast_to(a_in, (n_dom,) + a_in.shape[1:]) if want_input else None)


# ----------------------------------------------------------------------------------------------
# interval bounds


def ibp_linear(nd: Node, bounds: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    cen = nd.bias[None, :]
    rad = 0.0
    for i, (p, w) in enumerate(zip(nd.parents, nd.mats)):
        l, u = bounds[p]
        cen = cen + apply_mat(0.5 * (l + u), w)
        rad = rad + apply_mat(0.5 * (u - l), nd.mat_abs(i))
    return cen - rad, cen + rad


def _needed_rows(net: Network, j: int, l: np.ndarray, u: np.ndarray) -> np.ndarray:
    kinds = {net.nodes[c].kind for c in net.consumers[j]}
    if kinds & {"sigmoid", "tanh", "maxpool"}:
        return np.arange(l.shape[1])
    if kinds & {"relu", "leaky"}:
        return np.nonzero(((l < 0) & (u > 0)).any(axis=0))[0]
    return np.zeros(0, dtype=np.int64)


def _row_chunks(n_rows: int, b: int, width: int) -> list[slice]:
    step = max(1, _CHUNK // max(1, b * width))
    return [slice(s, min(n_rows, s + step)) for s in range(0, n_rows, step)]


def _max_width(net: Network, upto: int) -> int:
    return max(nd.size for nd in net.nodes[: upto + 1])


def intermediate_bounds(prob: Problem, dom: Domains, set_eps: bool = False) -> list[Any]:
    """Bounds ``(l, u) [B, D_j]`` on every node but the output, over the generalised domains
    (``set_eps``: the domain is the ball, and each linear node's rounding bound is set from the
    bounds of its inputs as they are reached)."""
    net = prob.net
    b = len(dom)
    bounds: list[Any] = [None] * len(net.nodes)
    # the interval of every scalar over the set: a forced pixel lies in its box; any other pixel
    # is either unchanged (x0, which may lie outside [lo, hi]) or changed into its box
    forced_sc = dom.forced[:, prob.pixel]
    bounds[0] = (
        np.where(forced_sc, dom.lo, np.minimum(dom.lo, prob.x0)),
        np.where(forced_sc, dom.hi, np.maximum(dom.hi, prob.x0)),
    )
    rx = _Relax(net, bounds)
    for j in range(1, net.output + (1 if set_eps else 0)):
        nd = net.nodes[j]
        if nd.kind != "linear":
            l, u = bounds[nd.parents[0]]
            bounds[j] = nonlinear_interval(nd, l, u)
            continue
        if set_eps:
            assert prob.eps is not None
            prob.eps[j] = _rounding_bound(prob, nd, bounds, int(dom.budget[0]))
            if j == net.output:
                break
        l, u = ibp_linear(nd, bounds)
        l = np.broadcast_to(l, (b, nd.size)).copy()
        u = np.broadcast_to(u, (b, nd.size)).copy()
        rows = _needed_rows(net, j, l, u)
        if rows.size:
            width = _max_width(net, j)
            for sl in _row_chunks(2 * rows.size, b, width):
                idx2 = np.concatenate([rows, rows])[sl]
                sign = np.concatenate([np.ones(rows.size), -np.ones(rows.size)])[sl]
                lb, _ = backward(prob, rx, j, None, None, b, select=(idx2, sign), dom=dom)
                up = sign > 0
                li, ui = idx2[up], idx2[~up]
                l[:, li] = np.maximum(l[:, li], lb[:, up])
                u[:, ui] = np.minimum(u[:, ui], -lb[:, ~up])
        u = np.maximum(u, l)
        eps = prob.rounding(j)
        if eps is not None:  # the node's own rounding (its inputs' is inside the bounds already)
            l, u = l - eps, u + eps
        bounds[j] = (l, u)
    return bounds


def _rounding_bound(prob: Problem, nd: Node, bounds: list[Any], t: int) -> np.ndarray:
    """``eps_j``: what float32 rounding inside linear node ``nd``'s chain of operators can add,
    given float32-valid bounds on its inputs (``certify/float32.py``)."""
    g = nd.gsum
    eps = g * nd.bmass
    if not g:
        return eps
    for i, (p, m) in enumerate(zip(nd.parents, nd.mass)):
        mag = np.maximum(np.abs(bounds[p][0]), np.abs(bounds[p][1])).max(axis=0)
        if nd.abs_exact[i]:
            term = prob.input_magnitude(nd, i, t) if p == 0 else apply_mat(mag[None], nd.mat_abs(i))[0]
        else:
            term = m * mag.max()
        eps = eps + g * term
    return float32.SAFETY * eps


def spec_matrix(k: int, ref: int) -> np.ndarray:
    """Rows ``e_ref - e_j`` for every class ``j != ref`` (``[K-1, K]``)."""
    others = [j for j in range(k) if j != ref]
    c = np.zeros((len(others), k))
    c[np.arange(len(others)), ref] = 1.0
    c[np.arange(len(others)), others] = -1.0
    return c


def spec_bounds(prob: Problem, dom: Domains, ref: int, want_input: bool = False,
                bounds: list[Any] | None = None) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    """Lower bounds ``[B, K-1]`` of ``z_ref - z_k`` over the generalised domains (``bounds``: their
    intermediate bounds, when already known)."""
    net = prob.net
    bounds = intermediate_bounds(prob, dom) if bounds is None else bounds
    rx = _Relax(net, bounds)
    c = spec_matrix(net.n_outputs, ref)
    lb, a_in = backward(prob, rx, net.output, c[None], None, len(dom), dom=dom, want_input=want_input)
    if not prob.exact_arithmetic:
        lb = lb - prob.final_slack
    return lb, a_in, bounds


# ----------------------------------------------------------------------------------------------
# boxes with few free scalars: forward-mode linear bounds


@dataclass
class Boxes:
    S: np.ndarray  # [B, F] free scalar indices (padding: -1, with dlo = dhi = 0)
    dlo: np.ndarray  # [B, F]
    dhi: np.ndarray  # [B, F]
    depth: np.ndarray  # [B] int

    def __len__(self) -> int:
        return int(self.S.shape[0])

    def take(self, idx: Any) -> "Boxes":
        return Boxes(self.S[idx], self.dlo[idx], self.dhi[idx], self.depth[idx])

    @staticmethod
    def concat(parts: list["Boxes"]) -> "Boxes":
        f = max(p.S.shape[1] for p in parts)

        def pad(x: np.ndarray, v: float) -> np.ndarray:
            if x.shape[1] == f:
                return x
            return np.concatenate([x, np.full((x.shape[0], f - x.shape[1]), v, dtype=x.dtype)], axis=1)

        return Boxes(
            np.concatenate([pad(p.S, -1) for p in parts]),
            np.concatenate([pad(p.dlo, 0.0) for p in parts]),
            np.concatenate([pad(p.dhi, 0.0) for p in parts]),
            np.concatenate([p.depth for p in parts]),
        )

    def points(self, prob: Problem, delta: np.ndarray) -> np.ndarray:
        """Model inputs ``[B, D]`` for offsets ``delta [B, F]`` (padding entries ignored)."""
        x = np.broadcast_to(prob.x0, (len(self), prob.x0.size)).copy()
        real = self.S >= 0
        rows = np.broadcast_to(np.arange(len(self))[:, None], self.S.shape)
        sc = self.S[real]
        # clipped into the valid range: x0 + (hi - x0) may round past hi
        x[rows[real], sc] = np.clip(prob.x0[sc] + delta[real], prob.lo[sc], prob.hi[sc])
        return x


def _lin_lower(rows: np.ndarray, dlo: np.ndarray, dhi: np.ndarray) -> np.ndarray:
    """``rows [B, F+1, D]`` (last row constant) -> least value over the delta box ``[B, D]``."""
    co = rows[:, :-1, :]
    return rows[:, -1, :] + np.minimum(co * dlo[:, :, None], co * dhi[:, :, None]).sum(axis=1)


def _lin_upper(rows: np.ndarray, dlo: np.ndarray, dhi: np.ndarray) -> np.ndarray:
    co = rows[:, :-1, :]
    return rows[:, -1, :] + np.maximum(co * dlo[:, :, None], co * dhi[:, :, None]).sum(axis=1)


def box_bounds(prob: Problem, boxes: Boxes, ref: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower bounds ``[B, K-1]`` of the margins over each box, and the coefficients ``[B, K-1, F]``
    of the best forward-mode linear lower bound (a hint towards the worst corner)."""
    net = prob.net
    nodes = net.nodes
    b, f = boxes.S.shape
    real = boxes.S >= 0
    S = np.where(real, boxes.S, 0)
    dlo = np.where(real, boxes.dlo, 0.0)
    dhi = np.where(real, boxes.dhi, 0.0)
    # interval of the input
    xl = np.broadcast_to(prob.x0, (b, prob.x0.size)).copy()
    xu = xl.copy()
    rows_idx = np.broadcast_to(np.arange(b)[:, None], S.shape)
    xl[rows_idx[real], S[real]] += dlo[real]
    xu[rows_idx[real], S[real]] += dhi[real]
    bounds: list[Any] = [None] * len(nodes)
    bounds[0] = (xl, xu)
    L: dict[int, np.ndarray] = {}
    U: dict[int, np.ndarray] = {}
    rx = _Relax(net, bounds)
    last = net.last_use
    for j in range(1, len(nodes)):
        nd = nodes[j]
        if nd.kind == "linear":
            lo_rows = np.zeros((b, f + 1, nd.size))
            lo_rows[:, -1, :] = nd.bias
            up_rows = lo_rows.copy()
            cen = np.broadcast_to(nd.bias, (b, nd.size)).copy()
            rad = np.zeros((b, nd.size))
            for i, (p, w) in enumerate(zip(nd.parents, nd.mats)):
                il, iu = bounds[p]
                if p == 0:
                    if w is None:
                        cols = np.zeros((b, f, nd.size))
                        cols[np.arange(b)[:, None], np.arange(f)[None, :], S] = real.astype(np.float64)
                        const = prob.x0
                    else:
                        cols = np.transpose(cols_of(w, S), (1, 2, 0)) * real[:, :, None]
                        const = prob.input_term(j, i)
                    lo_rows[:, :-1, :] += cols
                    up_rows[:, :-1, :] += cols
                    lo_rows[:, -1, :] += const
                    up_rows[:, -1, :] += const
                    # the exact interval of this term, from the few free columns
                    cen += const + np.einsum("bfd,bf->bd", cols, 0.5 * (dlo + dhi))
                    rad += np.einsum("bfd,bf->bd", np.abs(cols), 0.5 * (dhi - dlo))
                    continue
                lp, up = L[p], U[p]
                if w is None:
                    lo_rows += lp
                    up_rows += up
                    cen += 0.5 * (il + iu)
                    rad += 0.5 * (iu - il)
                    continue
                # L W+ + U W- = M W - R |W|,  U W+ + L W- = M W + R |W|  (M, R: mid, half-gap rows)
                # and the interval bound in the same two products
                mid = np.concatenate([0.5 * (lp + up), 0.5 * (il + iu)[:, None, :]], axis=1)
                gap = np.concatenate([0.5 * (up - lp), 0.5 * (iu - il)[:, None, :]], axis=1)
                mw = apply_mat(mid, w)
                rw = apply_mat(gap, nd.mat_abs(i))
                lo_rows += mw[:, :-1] - rw[:, :-1]
                up_rows += mw[:, :-1] + rw[:, :-1]
                cen += mw[:, -1]
                rad += rw[:, -1]
            eps = prob.rounding(j)
            if eps is not None:
                lo_rows[:, -1, :] -= eps
                up_rows[:, -1, :] += eps
                rad = rad + eps
            L[j], U[j] = lo_rows, up_rows
            if j != net.output:
                l = np.maximum(cen - rad, _lin_lower(lo_rows, dlo, dhi))
                u = np.minimum(cen + rad, _lin_upper(up_rows, dlo, dhi))
                bounds[j] = (l, np.maximum(u, l))
        elif nd.kind == "maxpool":
            p = nd.parents[0]
            l, u = bounds[p]
            bounds[j] = nonlinear_interval(nd, l, u)
            pr: PoolRelax = rx.get(j)
            gi = np.broadcast_to(pr.istar[:, None, :], (b, f + 1, nd.size))
            L[j] = np.take_along_axis(L[p], gi, axis=2)
            ux = np.take_along_axis(U[p], gi, axis=2)
            const = np.zeros_like(ux)
            const[:, -1, :] = pr.ub
            U[j] = np.where(pr.exact[:, None, :], ux, const)
        else:
            p = nd.parents[0]
            l, u = bounds[p]
            bounds[j] = nonlinear_interval(nd, l, u)
            sl, bl, su, bu = rx.get(j)
            lp, up = L[p], U[p]
            lo_rows = np.maximum(sl, 0)[:, None, :] * lp + np.minimum(sl, 0)[:, None, :] * up
            up_rows = np.maximum(su, 0)[:, None, :] * up + np.minimum(su, 0)[:, None, :] * lp
            lo_rows[:, -1, :] += bl
            up_rows[:, -1, :] += bu
            L[j], U[j] = lo_rows, up_rows
            # tighten with the forward-mode rows
            nl, nu = bounds[j]
            l2 = np.maximum(nl, _lin_lower(lo_rows, dlo, dhi))
            u2 = np.maximum(np.minimum(nu, _lin_upper(up_rows, dlo, dhi)), l2)
            bounds[j] = (l2, u2)
        for p in nd.parents:
            if last[p] == j and p != 0:
                L.pop(p, None)
                U.pop(p, None)
    out = net.output
    lo_out, up_out = L[out], U[out]
    others = [k for k in range(net.n_outputs) if k != ref]
    rows = lo_out[:, :, ref : ref + 1] - up_out[:, :, others]  # [B, F+1, K-1]
    fwd = _lin_lower(rows, dlo, dhi)
    hint = np.transpose(rows[:, :-1, :], (0, 2, 1))
    # backward CROWN on the specification, with the intermediate bounds just found
    undecided = (fwd <= 0).any(axis=1)
    lb = fwd
    if undecided.any():
        sel = np.nonzero(undecided)[0]
        sub = [(bounds[i][0][sel], bounds[i][1][sel]) if bounds[i] is not None else None for i in range(len(nodes))]
        rx2 = _Relax(net, sub)
        c = spec_matrix(net.n_outputs, ref)
        bi = BoxInput(S[sel], dlo[sel], dhi[sel])
        blb, _ = backward(prob, rx2, out, c[None], None, sel.size, box=bi)
        lb = fwd.copy()
        lb[sel] = np.maximum(fwd[sel], blb)
    if not prob.exact_arithmetic:
        lb = lb - prob.final_slack
    return lb, hint
