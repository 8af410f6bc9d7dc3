"""Backward CROWN for the intermediate neurons of each box, over the box's cone.

Forward-mode rows (``certify/boxes.py``) carry every relaxation's gap as an interval, which
``|W|`` widens at each layer: on a six-layer ResNet the bounds of a one-pixel box are 60 times the
sampled range by the last block, and no whole-range pixel box is proven. Backward substitution
keeps those gaps linear down to the input, as CROWN does over the ball. A box's cone (the neurons
its free scalars reach) is small, a few hundred neurons per layer for one pixel, so the
substitution runs on dense blocks ``W[cone_k, cone_p]`` of each layer, built once per box.

Outside its cone a box's values are the clean input's. They enter as constants, bounded by the
clean box's bounds (``boxes._clean``: float32 rounding as a band around the float64 value), so
every bound here holds for the network evaluated in float32, like the rest of ``certify/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from l0tre_core.certify import boxes  # (a module reference: boxes imports this module)
from l0tre_core.certify.network import rows_of
from l0tre_core.certify.ops.activation import PoolRelax, nonlinear_interval, pool_relax, relax
from l0tre_core.certify.problem import Problem

# off by default: measured on single-pixel boxes (``benchmarks/certify_local.py``, RESULTS.md), it
# proves a few more sub-boxes of the ResNet in float64 (69 -> 72 %) but not in float32 (66 -> 67 %),
# where the band charged outside the cone at every layer eats the gain, and it costs 20-25 % more
# time per box there; no benchmark row decided more inputs with it. When on, it runs for the boxes
# of t pixels (``box_bounds`` inside the ball), not for the cover's blocks
ENABLED = False
# a box goes through this pass only when every margin bound is above -REACH clean margins: the
# pass narrows a box's margin bounds by a fraction of a clean margin (measured on the max-pool
# CNN's 16-pixel blocks), so a box further below is split in any case
REACH = 1.0
# multiply-adds one box may spend on one back-substitution step; a larger step (a wide cone, a
# block of many pixels) keeps its forward-mode bounds
MAX_STEP = 400_000_000
# entries of one dense max-pool step (rows x the pool's input)
MAX_POOL_STEP = 24_000_000
_SUPPORTED = ("linear", "relu", "leaky", "sigmoid", "tanh", "maxpool")


class _Box:
    """One box: its cones as index arrays, and the dense blocks of the layers over them."""

    def __init__(self, prob: Problem, b: int, S: np.ndarray, cones: dict[int, np.ndarray] | None,
                 clean: dict[str, Any]) -> None:
        self.prob = prob
        self.b = b
        self.S = S
        self.cones = cones
        self.clean = clean
        self._idx: dict[int, np.ndarray] = {}
        self._blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pools: dict[int, PoolRelax] = {}

    def cone(self, k: int) -> np.ndarray:
        if k not in self._idx:
            size = self.prob.net.nodes[k].size
            self._idx[k] = np.arange(size) if self.cones is None else np.nonzero(self.cones[k][self.b])[0]
        return self._idx[k]

    def block(self, k: int, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For parent ``i`` of linear node ``k``: ``W[cone_k, cone_p]``, the clean values outside
        ``cone_p`` through ``W`` (``[n_k]``), and ``|W|`` of the clean band (``[n_k]``)."""
        key = (k, i)
        if key not in self._blocks:
            nd = self.prob.net.nodes[k]
            p, w = nd.parents[i], nd.mats[i]
            ck, cp = self.cone(k), self.cone(p)
            wb = rows_of(w, ck, self.prob.net.nodes[p].size)[:, cp]
            w_mid, w_gap = boxes.clean_images(self.clean, nd, k, i)
            outside = w_mid[1, ck] - wb @ self.clean["mid"][p][1][cp]
            self._blocks[key] = (wb, outside, w_gap[1, ck])
        return self._blocks[key]

    def pool(self, k: int, bounds: list[Any]) -> PoolRelax:
        """Max-pool ``k``'s relaxation over this box's bounds on its input (``pool_relax``)."""
        if k not in self._pools:
            p = self.prob.net.nodes[k].parents[0]
            self._pools[k] = pool_relax(self.prob.net.nodes[k], bounds[p][0][self.b : self.b + 1],
                                        bounds[p][1][self.b : self.b + 1])
        return self._pools[k]


def _pool_step(box: _Box, k: int, a: np.ndarray, bounds: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows ``a [R, n_k]`` over max-pool ``k``'s cone -> their relaxation over the pool's whole
    input ``[R, D_p]`` (positive entries take ``x[i*]``, negative ones the upper plane) and its
    constant; ``(full, c)``. None when too large (``MAX_POOL_STEP``)."""
    nd = box.prob.net.nodes[k]
    d_p = box.prob.net.nodes[nd.parents[0]].size
    r = a.shape[0]
    if r * d_p > MAX_POOL_STEP:
        return None
    ck = box.cone(k)
    pr = box.pool(k, bounds)
    pos = np.maximum(a, 0.0)
    neg = np.minimum(a, 0.0)
    c = neg @ pr.off[0, ck]
    istar = pr.istar[0, ck]  # [n_k]
    idx = nd.pool_idx[ck]  # [n_k, K]
    slope = pr.slope[0, ck]  # [n_k, K]
    rows = np.arange(r)[:, None]
    flat = (rows * d_p + istar[None, :]).reshape(-1)
    full = np.bincount(flat, weights=pos.reshape(-1), minlength=r * d_p)
    live = (idx >= 0) & (slope != 0)
    rk, kk = np.nonzero(live)
    if rk.size:
        w = neg[:, rk] * slope[rk, kk][None, :]  # [R, E]
        flat = (rows * d_p + idx[rk, kk][None, :]).reshape(-1)
        full += np.bincount(flat, weights=w.reshape(-1), minlength=r * d_p)
    return full.reshape(r, d_p), c


def _lower(box: _Box, j: int, a_j: np.ndarray, bounds: list[Any], eps_box: dict[int, np.ndarray],
           dlo: np.ndarray, dhi: np.ndarray) -> np.ndarray | None:
    """Lower bounds of the rows ``a_j [R, n_j]`` over node ``j``'s values on its cone, by backward
    substitution to the box's free scalars. None when a step is too large (``MAX_STEP``)."""
    prob = box.prob
    nodes = prob.net.nodes
    b = box.b
    A: dict[int, np.ndarray] = {j: a_j}
    c = np.zeros(a_j.shape[0])
    a_free = np.zeros((a_j.shape[0], box.S.size))
    for k in range(j, 0, -1):
        a = A.pop(k, None)
        if a is None:
            continue
        nd = nodes[k]
        ck = box.cone(k)
        if nd.kind == "linear":
            c += a @ nd.bias[ck]
            if k in eps_box:
                c -= np.abs(a) @ eps_box[k][b, ck]
            for i, p in enumerate(nd.parents):
                if p == 0:
                    c += a @ prob.input_term(k, i)[ck]
                    if nd.mats[i] is None:
                        cols = (ck[:, None] == box.S[None, :]).astype(np.float64)
                    else:
                        cols = nd.input_cols(i, box.S)[:, ck].T  # [n_k, F]
                    a_free += a @ cols
                    continue
                if a.shape[0] * ck.size * box.cone(p).size > MAX_STEP:
                    return None
                wb, outside, band = box.block(k, i)
                c += a @ outside - np.abs(a) @ band
                contrib = a @ wb
                A[p] = A[p] + contrib if p in A else contrib
        elif nd.kind == "maxpool":
            p = nd.parents[0]
            step = _pool_step(box, k, a, bounds)
            if step is None:
                return None
            full, cp_ = step
            cp = box.cone(p)
            out = np.ones(full.shape[1], dtype=bool)
            out[cp] = False
            # the pool's inputs outside the parent's cone are clean values within the band
            mid, gap = box.clean["mid"][p][1], box.clean["gap"][p][1]
            c += cp_ + full[:, out] @ mid[out] - np.abs(full[:, out]) @ gap[out]
            contrib = full[:, cp]
            A[p] = A[p] + contrib if p in A else contrib
        else:
            p = nd.parents[0]
            lp, up = bounds[p]
            sl, bl, su, bu = relax(nd, lp[b, ck], up[b, ck])
            pos = np.maximum(a, 0.0)
            neg = np.minimum(a, 0.0)
            c += pos @ bl + neg @ bu
            contrib = pos * sl + neg * su  # a nonlinear node's cone is its parent's
            A[p] = A[p] + contrib if p in A else contrib
    return c + np.minimum(a_free * dlo[b], a_free * dhi[b]).sum(axis=1)


def tighten(prob: Problem, S: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, bounds: list[Any],
            cones: dict[int, np.ndarray] | None, eps_box: dict[int, np.ndarray], clean: dict[str, Any],
            spec: np.ndarray) -> np.ndarray:
    """Tighten ``bounds`` (``(l, u) [B, D_k]`` per node, in place) of the intermediate neurons
    that feed a nonlinearity and are unstable in their box, node by node, each from the bounds
    tightened below it; then bound the rows ``spec [R, K]`` over the output with them.

    ``S``/``dlo``/``dhi``: the boxes (padding: index 0, zero width); ``cones``: per node, where
    each box may differ from the clean input (None: everywhere). A node too wide for one box
    (``MAX_STEP``) keeps its bounds; the first node with no relaxation here ends the box's pass.
    Returns ``[B, R]``, ``-inf`` where the rows could not be bounded here."""
    net = prob.net
    nodes = net.nodes
    out = np.full((S.shape[0], spec.shape[0]), -np.inf)
    for b in range(S.shape[0]):
        prob.check_time()
        box = _Box(prob, b, S[b], cones, clean)
        complete = True
        for j in range(1, net.output):
            nd = nodes[j]
            if nd.kind not in _SUPPORTED:
                complete = False
                break
            if nd.kind != "linear":  # its interval, from its input's tightened bounds
                lp, up = bounds[nd.parents[0]]
                lo, hi = nonlinear_interval(nd, lp[b : b + 1], up[b : b + 1])
                bounds[j][0][b] = np.maximum(bounds[j][0][b], lo[0])
                bounds[j][1][b] = np.minimum(bounds[j][1][b], hi[0])
                continue
            if not any(nodes[c].kind != "linear" for c in net.consumers[j]):
                continue
            l, u = bounds[j]
            cj = box.cone(j)
            open_ = np.nonzero((l[b, cj] < 0) & (u[b, cj] > 0))[0]
            if open_.size == 0:
                continue
            r = open_.size
            a_j = np.zeros((2 * r, cj.size))
            a_j[np.arange(r), open_] = 1.0
            a_j[r + np.arange(r), open_] = -1.0
            lb = _lower(box, j, a_j, bounds, eps_box, dlo, dhi)
            if lb is None:  # too many rows over too wide a cone: its forward-mode bounds stay
                continue
            rows = cj[open_]
            l[b, rows] = np.maximum(l[b, rows], lb[:r])
            u[b, rows] = np.maximum(np.minimum(u[b, rows], -lb[r:]), l[b, rows])
        co = box.cone(net.output)
        if complete and co.size == nodes[net.output].size:
            lb = _lower(box, net.output, spec[:, co], bounds, eps_box, dlo, dhi)
            if lb is not None:
                out[b] = lb
    return out
