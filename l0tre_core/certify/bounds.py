"""Linear bound propagation over generalised L0 domains (NumPy, float64): backward CROWN.

- ``backward``: lower bounds of rows over a node's values by backward substitution to the input,
  with the per-node relaxations of ``_Relax``; concretised over ``Domains`` by the top-k rule
  (``certify/problem.py``) or, with a ``BoxInput``, over a box with few free scalars.
- ``intermediate_bounds``: interval arithmetic plus backward CROWN for every intermediate neuron
  (and, over the ball, each linear node's float32 rounding bound ``_rounding_bound``).
- ``spec_bounds``: lower bounds of the margins ``z_ref - z_k`` (rows of ``spec_matrix``).

Every bound holds for every point of the set, for the network evaluated in float32 (rounding as a
bounded perturbation per node: ``Problem.rounding``, ``Problem.final_slack``).

The problem and the domains live in ``certify/problem.py``, the boxes with few free scalars and
their forward-mode bounds in ``certify/boxes.py``; this module re-exports ``Problem``, ``Domains``,
``pixel_terms``, ``concretize``, ``Boxes``, ``BoxInput`` and ``box_bounds`` for older importers
(the last three on first use: ``certify/boxes.py`` imports this module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from l0tre_core.certify import float32
from l0tre_core.certify.arrays import backend_of
from l0tre_core.certify.network import Network, Node, apply_mat, back_mat, rows_of
from l0tre_core.certify.ops.activation import PoolRelax, nonlinear_interval, pool_relax, relax
from l0tre_core.certify.problem import Domains, Problem, concretize, pixel_terms

if TYPE_CHECKING:
    from l0tre_core.certify.boxes import BoxInput

__all__ = [
    "Problem", "Domains", "pixel_terms", "concretize", "backward", "ibp_linear", "intermediate_bounds",
    "spec_matrix", "spec_bounds", "Boxes", "BoxInput", "box_bounds",
]

_CHUNK = 6_000_000  # floats in one [B, R, D] block

_FROM_BOXES = ("Boxes", "BoxInput", "box_bounds")


def __getattr__(name: str) -> Any:
    """The box names, re-exported from ``certify/boxes.py`` on first use (it imports this module)."""
    if name in _FROM_BOXES:
        from l0tre_core.certify import boxes

        return getattr(boxes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------
# backward CROWN


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
    xp = backend_of(a).xp
    flat = (xp.arange(b)[:, None, None] * r + xp.arange(r)[None, :, None]) * size + istar[:, None, :]
    out = np.bincount(flat.reshape(-1), weights=a.reshape(-1), minlength=b * r * size)
    return out.reshape(b, r, size)


def _scatter_window(a: np.ndarray, slope: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
    """``out[b, r, idx[j, k]] += a[b, r, j] * slope[b, j, k]`` (padding ``idx < 0`` has slope 0)."""
    b, r, dout = a.shape
    kw = idx.shape[1]
    dev = backend_of(a)
    live = (slope != 0).any(axis=(0, 2))  # the outputs whose upper bound has a linear part
    if not live.any():
        return dev.xp.zeros((b, r, size))
    idx = dev.put(idx)
    cols = np.nonzero(live)[0]
    w = a[:, :, cols, None] * slope[:, None, cols, :]  # [B, R, D', K]
    tgt = np.broadcast_to(np.where(idx[cols] < 0, 0, idx[cols]), (b, cols.size, kw))
    return _scatter_rows(w.reshape(b, r, cols.size * kw), tgt.reshape(b, cols.size * kw), size)


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
    rounding: dict[int, np.ndarray] | None = None,
    stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lower bound of rows over node ``start``'s values, by backward substitution to the input.

    The rows are ``a_start [B' or 1, R, D_start]`` (+ ``c_start``) or, for a linear ``start``,
    ``select = (idx, sign)``: ``sign * value[idx]``. Returns ``[B, R]`` (and the input
    coefficients ``[B, R, D]`` when ``want_input``). ``rounding``: per linear node, a float32
    rounding bound per domain ``[B, D_j]`` to use in place of the ball's ``Problem.rounding``.

    ``stop``: a node every path from the input to ``start`` passes through (``Network.cut``): the
    substitution stops there and returns the constants ``[B or 1, R]`` and the coefficients of
    that node's values ``[B or 1, R, D_stop]`` instead (what ``start``'s rows are at least, as a
    linear function of them).
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
        c = backend_of(a_start).xp.zeros(a_start.shape[:2]) if c_start is None else c_start
        top = start
    a_free: np.ndarray | None = None  # box mode: coefficients of delta [B, R, F]
    for j in range(top, 0, -1):
        if j == stop:
            assert set(A) == {stop}, "the backward pass stops at a node that is not a cut"
            return c, A[stop]
        if j not in A:
            continue
        a = A.pop(j)
        nd = nodes[j]
        dev = backend_of(a)
        if nd.kind == "linear":
            c = c + a @ dev.put(nd.bias)
            eps = prob.rounding(j)
            if rounding is not None and j in rounding:
                c = c - (np.abs(a) * rounding[j][:, None, :]).sum(axis=-1)
            elif eps is not None:
                c = c - np.abs(a) @ dev.put(eps)
            for p, w in zip(nd.parents, nd.mats):
                if p == 0 and box is not None:
                    c = c + a @ dev.put(prob.input_term(j, nd.parents.index(p)))
                    if w is None:
                        cols = np.take_along_axis(np.broadcast_to(a, (n_dom,) + a.shape[1:]), box.S[:, None, :], axis=2)
                    else:
                        ws = nd.input_cols(nd.parents.index(p), box.S)  # [B, F, Dj]
                        cols = np.matmul(a, np.swapaxes(ws, 1, 2))  # [B, R, F] (a broadcasts over B)
                    a_free = cols if a_free is None else a_free + cols
                    continue
                contrib = back_mat(a, w)
                A[p] = A[p] + contrib if p in A else contrib
        elif nd.kind == "maxpool":
            # positive coefficients take the lower bound x[i*]; negative ones the upper
            # off + sum_k slope_k x[idx_k], spread over the window (``pool_relax``)
            pr: PoolRelax = rx.get(j)
            ab = np.broadcast_to(a, (n_dom,) + a.shape[1:])
            pos = np.maximum(ab, 0.0)
            neg = np.minimum(ab, 0.0)
            c = c + (neg * pr.off[:, None, :]).sum(axis=-1)
            p = nd.parents[0]
            contrib = _scatter_rows(pos, pr.istar, nodes[p].size)
            contrib += _scatter_window(neg, pr.slope, nd.pool_idx, nodes[p].size)
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
        terms = np.minimum(a_free * box.dlo[:, None, :], a_free * box.dhi[:, None, :])  # [B, R, F]
        if box.budget is not None:
            return c + box.budget.least(np.moveaxis(terms, 2, 1)), None
        return c + terms.sum(axis=-1), None
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
    bounds of its inputs as they are reached).

    ``prob.light``: backward CROWN only for the nodes that read the input alone (exact top-k
    bounds there), interval arithmetic everywhere else. Looser but sound, and far cheaper on wide
    convolutional networks, where the t = 1 search decides by boxes and the ball's bounds serve
    only the float32 rounding magnitudes and the one-pass check.

    Raises ``OutOfTime`` (``certify/problem.py``) between nodes and row chunks once
    ``prob.deadline`` has passed."""
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
        prob.check_time()
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
        if prob.light and any(p != 0 for p in nd.parents):
            rows = rows[:0]
        if rows.size:
            width = _max_width(net, j)
            for sl in _row_chunks(2 * rows.size, b, width):
                prob.check_time()
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

