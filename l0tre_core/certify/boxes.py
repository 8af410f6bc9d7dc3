"""Boxes with few free scalars: the leaves of the search (NumPy, float64).

``Boxes`` — a box where only a few scalars ``S`` (F of them) are free and everything else equals
``x0`` (one pixel free for t = 1). ``box_bounds`` bounds the margins over each box: forward-mode
linear bounds in the F free scalars (cheap: F + 1 rows per neuron) for the intermediate neurons,
and backward CROWN (``certify/bounds.py``) for the specification, with the input layer restricted
to the free columns (``BoxInput``). Sound for the network evaluated in float32, as every bound of
``certify/bounds.py``; each box's float32 rounding terms come from its own bounds
(``_box_rounding``), not the ball's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from l0tre_core.certify import float32, local, stem
from l0tre_core.certify.arrays import NUMPY, ArrayBackend, add_at, backend_of
from l0tre_core.certify.bounds import _Relax, backward, spec_matrix
from l0tre_core.certify.network import apply_mat
from l0tre_core.certify.ops.activation import PoolRelax, nonlinear_interval, pool_relax_windows, pool_values, relax
from l0tre_core.certify.ops.affine import ConvOp
from l0tre_core.certify.problem import Budget, Problem

# convolutions over each box's cone only (``_conv_terms``); False: over the whole input, as before
CONES = True
# the backward pass on the margins stops at the cut before the dense head first (``_spec_backward``)
STAGED = True
# a box's intermediate bounds take its pixel budget (``Budget``) on nodes at most this wide: on a
# wide convolution a neuron's cone holds few of a block's pixels, and the rule costs more than it
# tightens (max-pool CNN, t = 2: 17.6 s with 1,024, 20.3 s with the margins alone)
BUDGET_ROWS = 1024
# a budget box's rows at the cut are anchored at the clean values, each relaxation gap charged to
# the pixels that reach it (``_anchor``); False: the gaps as constants, as before
ANCHOR = True


@dataclass
class BoxInput:
    """Restrict the input to ``x0`` plus free scalars ``S [B, F]`` moving by ``delta`` in a box."""

    S: np.ndarray  # [B, F] scalar indices (padding: index 0 with zero width)
    dlo: np.ndarray  # [B, F]
    dhi: np.ndarray  # [B, F]
    budget: Budget | None = None  # at most this many of the box's pixels change (None: all may)


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


def _weigh(rows: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_f rows[b, f, d] w[b, f]`` -> ``[B, D]`` (a batched BLAS product: 2-3x einsum's speed)."""
    return np.matmul(w[:, None, :], rows)[:, 0, :]


def _lin_lower(rows: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, budget: Budget | None = None) -> np.ndarray:
    """``rows [B, F+1, D]`` (last row constant) -> least value over the delta box ``[B, D]``:
    centre minus radius, two batched products instead of two full products and a minimum. With a
    ``budget``, over the box's points that change at most that many pixels."""
    co = rows[:, :-1, :]
    if budget is not None:
        return rows[:, -1, :] + budget.least(np.minimum(co * dlo[:, :, None], co * dhi[:, :, None]))
    return (rows[:, -1, :] + _weigh(co, 0.5 * (dlo + dhi))
            - _weigh(np.abs(co), 0.5 * (dhi - dlo)))


def _lin_upper(rows: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, budget: Budget | None = None) -> np.ndarray:
    co = rows[:, :-1, :]
    if budget is not None:
        return rows[:, -1, :] - budget.least(np.minimum(-co * dlo[:, :, None], -co * dhi[:, :, None]))
    return (rows[:, -1, :] + _weigh(co, 0.5 * (dlo + dhi))
            + _weigh(np.abs(co), 0.5 * (dhi - dlo)))


def _clean(prob: Problem) -> dict[str, Any]:
    """The forward-mode rows of the box with nothing free (the clean input; float32 rounding as
    a band), per node, and their images under each convolution: what every box's rows equal
    outside its cone. Cached on ``prob`` for its rounding bounds."""
    key = (id(prob.eps), prob.exact_arithmetic)
    cache = prob.__dict__.setdefault("_clean_rows", {})
    if key not in cache:
        empty = np.full((1, 1), -1, dtype=np.int64)
        zero = np.zeros((1, 1))
        rec: dict[str, Any] = {"mid": {}, "gap": {}, "mw": {}, "rw": {}, "mag": {}, "magw": {}, "pool": {}, "pool_up": {}, "act": {}}
        _forward(prob, empty, zero, zero, None, rec)
        cache[key] = rec
    return cache[key]


def clean_images(clean: dict[str, Any], nd: Any, j: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """``W mid`` and ``|W| gap`` of the clean box's rows of parent ``i`` of linear node ``j``
    (``[2, D_j]``: the rows' constant, then the interval's), cached on the clean record."""
    if (j, i) not in clean["mw"]:
        p = nd.parents[i]
        # "rw" before "mw", which is the one tested: a thread bounding boxes beside this one
        # (``_Search._threads``) sees both or neither
        clean["rw"][(j, i)] = apply_mat(clean["gap"][p], nd.mat_abs(i))
        clean["mw"][(j, i)] = apply_mat(clean["mid"][p], nd.mats[i])
    return clean["mw"][(j, i)], clean["rw"][(j, i)]


def _conv_terms(nd: Any, i: int, j: int, p: int, cm: np.ndarray, cg: np.ndarray, mid: np.ndarray, gap: np.ndarray,
                mask: np.ndarray, clean: dict[str, Any], dev: ArrayBackend) -> tuple[np.ndarray, ...]:
    """``W mid`` and ``|W| gap`` for a convolution parent, as the clean rows' images plus the
    convolution of the difference over each box's cone only (zero outside it by construction:
    there every value equals the clean box's). Returns them and the cone of the result.

    A free scalar's coefficient rows are zero outside that scalar's own cone, which is far smaller
    than the box's (the union over its scalars): they are convolved apart, each over its own
    support, so a block of many spread-out pixels costs little more per scalar than one pixel.

    ``cm``, ``cg [B, F, D_p]``: the mid and half-gap coefficient rows; ``mid``, ``gap [B, 2, D_p]``:
    their constant rows (the rows', then the interval's). Returns ``W`` and ``|W|`` of each, and
    the cone of the result."""
    b, f, dp = cm.shape
    w = nd.mats[i]
    if f:
        flat_m, flat_g = cm.reshape(b * f, dp), cg.reshape(b * f, dp)
        pm, pg = w.apply_pair(flat_m, flat_g, (flat_m != 0) | (flat_g != 0))
        cmw, cgw = pm.reshape(b, f, -1), pg.reshape(b, f, -1)
    else:
        cmw = cgw = dev.xp.zeros((b, 0, nd.size))
    dm = np.where(mask[:, None, :], mid - dev.put(clean["mid"][p])[None], 0.0).reshape(b * 2, dp)
    dg = np.where(mask[:, None, :], gap - dev.put(clean["gap"][p])[None], 0.0).reshape(b * 2, dp)
    rep = np.repeat(mask, 2, axis=0)
    lm, reach = w.apply_local(dm, rep)
    lg, _ = nd.mat_abs(i).apply_local(dg, rep)
    mw, rw = (dev.put(v) for v in clean_images(clean, nd, j, i))
    return cmw, cgw, lm.reshape(b, 2, -1) + mw[None], lg.reshape(b, 2, -1) + rw[None], reach.reshape(b, 2, -1)[:, 0, :]


def _convs_after(net: Any, j: int) -> bool:
    """Whether a node after ``j`` has a convolution (only they use a precise cone). Cached."""
    cache = net.__dict__.setdefault("_convs_after", {})
    if j not in cache:
        cache[j] = any(isinstance(w, ConvOp) for nd in net.nodes[j + 1:] for w in nd.mats)
    return cache[j]


def _pool_over_cones(nd: Any, parent: tuple[np.ndarray, np.ndarray], cone: np.ndarray,
                     clean: tuple[tuple[np.ndarray, np.ndarray], PoolRelax],
                     dev: ArrayBackend) -> tuple[tuple[np.ndarray, np.ndarray], PoolRelax]:
    """A max-pool's interval bounds and relaxation over boxes, computed only on each box's cone
    (``cone [B, Dout]``): every other output reads only values the clean box bounds, so the clean
    box's bounds and relaxation hold for it (they are taken as they are)."""
    (cl, cu), cpr = clean
    b = cone.shape[0]
    bi, ci = np.nonzero(cone)
    idx = dev.put(nd.pool_idx)[ci]  # [N, K]
    pad = idx < 0
    safe = np.where(pad, 0, idx)
    lw = np.where(pad, -np.inf, parent[0][bi[:, None], safe])
    uw = np.where(pad, -np.inf, parent[1][bi[:, None], safe])
    pr = pool_relax_windows(lw, uw, idx)

    def over(full: np.ndarray, part: np.ndarray) -> np.ndarray:
        return _over_clean(dev.put(full), part, b, bi, ci)

    return (over(cl, lw.max(axis=-1)), over(cu, uw.max(axis=-1))), PoolRelax(
        over(cpr.istar, pr.istar), over(cpr.slope, pr.slope), over(cpr.off, pr.off), over(cpr.ub, pr.ub))


def _act_over_cones(nd: Any, parent: tuple[np.ndarray, np.ndarray], cone: np.ndarray,
                    clean: tuple[np.ndarray, ...], dev: ArrayBackend) -> tuple[np.ndarray, ...]:
    """An activation's relaxation over boxes, computed only on each box's cone (``cone [B, D]``):
    elsewhere its input's bounds are the clean box's, and so is the relaxation."""
    b = cone.shape[0]
    bi, ci = np.nonzero(cone)
    part = relax(nd, parent[0][bi, ci], parent[1][bi, ci])
    return tuple(_over_clean(dev.put(full), val, b, bi, ci) for full, val in zip(clean, part))


def _over_clean(full: np.ndarray, part: np.ndarray, b: int, bi: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """The clean box's ``full [1, D, ...]`` for each of ``b`` boxes, with ``part`` at the cone
    entries ``(bi, ci)``."""
    out = np.broadcast_to(full, (b,) + full.shape[1:]).copy()
    out[bi, ci] = part
    return out


def _box_rounding(prob: Problem, j: int, bounds: list[Any], S: np.ndarray, real: np.ndarray, dlo: np.ndarray,
                  dhi: np.ndarray, cone: dict[int, np.ndarray], clean: dict[str, Any] | None,
                  inside_ball: bool = True, input_abs: dict[int, Any] | None = None,
                  dev: ArrayBackend = NUMPY, local_abs: dict[int, np.ndarray] | None = None) -> np.ndarray | None:
    """``[B, D_j]``: the float32 rounding of linear node ``j`` over each box, from the box's own
    bounds on the node's inputs (float32-valid: they include every earlier node's rounding).

    The same Higham model as the ball's ``_rounding_bound`` (``certify/float32.py``), with the
    box's magnitudes in place of the ball's; both bound the real error, so the smaller is kept
    (``inside_ball``; a block with more free pixels than the ball's ``t`` leaves the ball, and only
    its own terms hold for it).
    With ``clean``, a convolution's ``|W| |v|`` is the clean box's image plus the difference over
    the cone: outside it every value is the clean input's float32 value, which the clean box's
    bounds contain. ``input_abs``: per input parent of the node, ``|W[:, S]|`` already gathered
    (or, from the stem, its values over each scalar's cone and their ``stem.ConeRows``).
    ``local_abs``: per convolution parent, ``|W|`` of the magnitudes' difference from the clean
    box's, already formed (``_stem_conv``)."""
    ball = dev.put(prob.rounding(j))
    if ball is None:
        return None
    nd = prob.net.nodes[j]
    g = nd.gsum
    b = S.shape[0]
    if not g:
        return np.broadcast_to(ball, (b, nd.size))
    eps = np.broadcast_to(g * dev.put(nd.bmass), (b, nd.size)).copy()
    for i, (p, m) in enumerate(zip(nd.parents, nd.mass)):
        w = nd.mats[i]
        m = dev.put(m)
        if p == 0:
            # |x| equals |x0| but at the few free scalars
            x0s = dev.put(prob.x0)[S]
            gain = np.maximum(np.maximum(np.abs(x0s + dlo), np.abs(x0s + dhi)) - np.abs(x0s), 0.0) * real
            if nd.abs_exact[i]:
                key = (j, i)
                cache = prob.__dict__.setdefault("_abs_input_terms", {})
                if key not in cache:
                    cache[key] = apply_mat(np.abs(prob.x0)[None], nd.mat_abs(i))[0].copy()
                term = np.broadcast_to(dev.put(cache[key]), (b, nd.size)).copy()
                if w is None:
                    add_at(term, (np.broadcast_to(dev.xp.arange(b)[:, None], S.shape), S), gain)
                else:
                    acols = np.abs(nd.input_cols(i, S)) if input_abs is None or i not in input_abs else input_abs[i]
                    if isinstance(acols, tuple):  # over each scalar's cone (``_stem_input``)
                        term += acols[1].scatter(acols[0] * gain[:, :, None])
                    else:
                        term += _weigh(acols, gain)
            else:
                top = np.maximum(np.abs(prob.x0).max(), (np.abs(x0s) + gain).max(axis=1))
                term = m[None, :] * top[:, None]
        else:
            lp, up = bounds[p]
            mag = np.maximum(np.abs(lp), np.abs(up))
            if not nd.abs_exact[i]:
                term = m[None, :] * mag.max(axis=1, keepdims=True)
            elif clean is not None and isinstance(w, ConvOp) and p in cone:
                if (j, i) not in clean["magw"]:
                    clean["magw"][(j, i)] = nd.mat_abs(i).apply(clean["mag"][p][None])[0]
                if local_abs is not None and i in local_abs:
                    loc = local_abs[i]
                else:
                    diff = np.where(cone[p], mag - dev.put(clean["mag"][p])[None], 0.0)
                    loc, _ = nd.mat_abs(i).apply_local(diff, cone[p])
                term = loc.reshape(b, -1) + dev.put(clean["magw"][(j, i)])[None]
            else:
                term = apply_mat(mag, nd.mat_abs(i))
        eps += g * term
    own = float32.SAFETY * eps
    return np.minimum(ball[None, :], own) if inside_ball else own


def _host(dev: ArrayBackend, v: Any) -> Any:
    """``v`` (arrays, and lists, tuples and dicts of them) on the host."""
    if isinstance(v, (list, tuple)):
        return type(v)(_host(dev, a) for a in v)
    if isinstance(v, dict):
        return {k: _host(dev, a) for k, a in v.items()}
    return dev.get(v)


def _indicators(dlo: np.ndarray, dhi: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The free scalars' ranges ``[B, F]`` with each pixel's change indicator after its ``width``
    scalars (range [0, 1]): the columns of anchored rows (``_anchor``)."""
    xp = backend_of(dlo).xp
    b, f = dlo.shape
    p = f // width
    zero = xp.zeros((b, p, 1))
    return (xp.concatenate([dlo.reshape(b, p, width), zero], axis=2).reshape(b, -1),
            xp.concatenate([dhi.reshape(b, p, width), zero + 1.0], axis=2).reshape(b, -1))


def _scalar_columns(f: int, width: int) -> np.ndarray:
    """The positions of the free scalars among the columns of anchored rows (``_indicators``)."""
    return np.arange(f // width * (width + 1)).reshape(-1, width + 1)[:, :width].reshape(-1)


def _anchor(prob: Problem, k: int, lo: np.ndarray, up: np.ndarray, S: np.ndarray, real: np.ndarray,
            clean: dict[str, Any], width: int, dev: ArrayBackend) -> tuple[np.ndarray, np.ndarray] | None:
    """Node ``k``'s rows ``[B, F+1, D]`` of budget boxes, anchored at the clean values: rows over
    the scalars and one change indicator per pixel (``_indicators``), ``[B, F+P+1, D]``.

    A neuron n that none of its pixels ``P_n`` reaches when they stay unchanged holds its clean
    value; its lower row ``L`` (whose coefficients outside ``P_n`` are zero) is then its constant
    ``L0 <= clean``. So ``L + g (1 - sum_{p in P_n} i_p)`` with ``g = clean_lo - L0 >= 0`` is a
    lower bound too: ``clean_lo`` where no pixel of ``P_n`` changes (every ``i_p`` 0), at most
    ``L`` where one does (``i_p`` 1). The relaxation gaps below the node, which the rows carry as
    constants charged whatever pixels change, are charged instead to the pixels that reach the
    neuron, and the budget's top-k rule counts only the pixels that change. Upper rows likewise.
    None where the pixels' cones are not built (``stem.CONES_MAX``)."""
    cones = stem.pixel_cones(prob, k)
    if cones is None:
        return None
    xp = dev.xp
    b, f1, d = lo.shape
    f = f1 - 1
    p = f // width
    reach = dev.put(cones)[dev.put(prob.pixel)[S[:, ::width]]]  # [B, P, D] (padding: S is 0 there)
    reach &= real[:, ::width, None]
    # a coefficient outside the structural cone would break the argument: taken into P_n too
    nonzero = ((lo[:, :f] != 0) | (up[:, :f] != 0)).reshape(b, p, width, d).any(axis=2)
    reach |= nonzero
    mid, gap = dev.put(clean["mid"][k][1]), dev.put(clean["gap"][k][1])
    g_lo = np.maximum(mid - gap - lo[:, -1, :], 0.0)
    g_up = np.maximum(up[:, -1, :] - (mid + gap), 0.0)

    def rows(r: np.ndarray, const: np.ndarray, ind: np.ndarray) -> np.ndarray:
        out = xp.empty((b, p * (width + 1) + 1, d))
        per_pixel = out[:, :-1].reshape(b, p, width + 1, d)  # (a view)
        per_pixel[:, :, :width] = r[:, :f].reshape(b, p, width, d)
        per_pixel[:, :, width] = ind
        out[:, -1] = const
        return out

    return rows(lo, lo[:, -1, :] + g_lo, -g_lo[:, None, :] * reach), rows(up, up[:, -1, :] - g_up, g_up[:, None, :] * reach)


def _stem_input(prob: Problem, j: int, S: np.ndarray, real: np.ndarray, dlo: np.ndarray, dhi: np.ndarray,
                bounds: list[Any], L: dict[int, Any], U: dict[int, Any], cone: dict[int, np.ndarray],
                eps_box: dict[int, np.ndarray], row_lo: dict[int, np.ndarray], row_up: dict[int, np.ndarray],
                clean: dict[str, Any] | None, inside_ball: bool, dev: ArrayBackend) -> None:
    """``_forward`` on node ``j``, the stem's convolution of the input (``stem.stem_end``): its
    rows over each free scalar's cone (``stem.ConeRows``, in ``L`` and ``U``), its cone, float32
    rounding and bounds, as the full rows give them."""
    nd = prob.net.nodes[j]
    rows = stem.input_rows(prob, j, S, real, dev.put(nd.bias) + dev.put(prob.input_term(j, 0)), dev)
    cols = rows.lo
    acols = np.abs(cols)
    # the exact interval of the node, from the few free columns
    cen = rows.lo0 + rows.scatter(cols * (0.5 * (dlo + dhi))[:, :, None])
    rad = rows.scatter(acols * (0.5 * (dhi - dlo))[:, :, None])
    cone[j] = rows.scatter((cols != 0) * 1.0) > 0
    eps = _box_rounding(prob, j, bounds, S, real, dlo, dhi, cone, clean, inside_ball, {0: (acols, rows)}, dev)
    if eps is not None:
        eps_box[j] = eps
        rows.lo0 -= eps
        rows.up0 += eps
        rad = rad + eps
    L[j] = U[j] = rows
    row_lo[j], row_up[j] = cen - rad, cen + rad
    bounds[j] = (row_lo[j], np.maximum(row_up[j], row_lo[j]))


def _stem_conv(prob: Problem, j: int, S: np.ndarray, real: np.ndarray, dlo: np.ndarray, dhi: np.ndarray,
               bounds: list[Any], L: dict[int, Any], U: dict[int, Any], cone: dict[int, np.ndarray],
               eps_box: dict[int, np.ndarray], row_lo: dict[int, np.ndarray], row_up: dict[int, np.ndarray],
               clean: dict[str, Any], inside_ball: bool, dev: ArrayBackend) -> None:
    """``_forward`` on node ``j``, a convolution inside the stem: the coefficient rows per free
    scalar by its pixel's block (``stem.conv_rows``); the constant rows, the interval and the
    float32 magnitudes as the clean box's images plus their differences over the box's cone, which
    the same blocks map (as ``_conv_terms`` and ``_box_rounding`` form them over a window)."""
    nd = prob.net.nodes[j]
    p = nd.parents[0]
    rows: stem.ConeRows = L[p]
    il, iu = bounds[p]
    mid = 0.5 * np.stack([rows.lo0 + rows.up0, il + iu], axis=1)
    gap = 0.5 * np.stack([rows.up0 - rows.lo0, iu - il], axis=1)
    mag = np.maximum(np.abs(il), np.abs(iu))
    inside = cone[p][:, None, :]
    dmid = np.where(inside, mid - dev.put(clean["mid"][p])[None], 0.0)
    dgap = np.where(inside, gap - dev.put(clean["gap"][p])[None], 0.0)
    dmag = np.where(inside, mag[:, None, :] - dev.put(clean["mag"][p])[None, None, :], 0.0)
    cmw, cgw, at, lw, la, cone[j] = stem.conv_rows(prob, j, rows, S, real, dev, dmid,
                                                   np.concatenate([dgap, dmag], axis=1))
    w_mid, w_gap = (dev.put(v) for v in clean_images(clean, nd, j, 0))
    mw, rw = lw + w_mid[None], la[:, :2] + w_gap[None]
    bias = dev.put(nd.bias)
    lo0, up0 = bias + (mw[:, 0] - rw[:, 0]), bias + (mw[:, 0] + rw[:, 0])
    cen, rad = bias + mw[:, 1], rw[:, 1]
    eps = _box_rounding(prob, j, bounds, S, real, dlo, dhi, cone, clean, inside_ball, None, dev, {0: la[:, 2]})
    if eps is not None:
        eps_box[j] = eps
        lo0, up0, rad = lo0 - eps, up0 + eps, rad + eps
    L[j] = U[j] = out = stem.ConeRows(at, cmw - cgw, cmw + cgw, lo0, up0)
    row_lo[j], row_up[j] = out.lower(dlo, dhi), out.upper(dlo, dhi)
    lo = np.maximum(cen - rad, row_lo[j])
    bounds[j] = (lo, np.maximum(np.minimum(cen + rad, row_up[j]), lo))


def _forward(prob: Problem, S: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, clean: dict[str, Any] | None,
             record: dict[str, Any] | None = None, inside_ball: bool = True,
             cones_out: dict[int, np.ndarray] | None = None, pools_out: dict[int, PoolRelax] | None = None,
             rows_out: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
             dev: ArrayBackend = NUMPY, budget: Budget | None = None) -> tuple[list[Any], np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Forward-mode linear bounds in the free scalars ``S [B, F]`` (padding -1): the interval
    bounds of every node but the output, and the output's lower and upper rows ``[B, F+1, K]``.

    With ``clean`` (``_clean``), each box's cone (the nodes its free scalars reach) is tracked and
    convolutions are evaluated over the cone only, plus the clean rows' images. ``record``: keep
    the clean box's rows per node (``_clean``); ``cones_out``: keep every node's cone there;
    ``pools_out``: every max-pool's relaxation; ``rows_out``: the lower and upper rows of the
    network's cut (``Network.cut``). Also returns each linear node's float32 rounding bound per box
    ``[B, D_j]`` (``_box_rounding``; empty in exact arithmetic).

    ``dev``: the device the arrays are on (``S``, ``dlo``, ``dhi`` there already; see
    ``certify/arrays.py``), and so are the results. ``budget``: the bounds hold over the box's
    points that change at most that many pixels (``Budget``; taken on nodes up to ``BUDGET_ROWS``
    wide, the others bounded over the whole box, which holds those points)."""
    xp = dev.xp
    net = prob.net
    nodes = net.nodes
    b, f = S.shape
    real = S >= 0
    S = np.where(real, S, 0)
    dlo = np.where(real, dlo, 0.0)
    dhi = np.where(real, dhi, 0.0)
    # interval of the input
    x0 = dev.put(prob.x0)
    xl = np.broadcast_to(x0, (b, x0.size)).copy()
    xu = xl.copy()
    rows_idx = np.broadcast_to(xp.arange(b)[:, None], S.shape)
    xl[rows_idx[real], S[real]] += dlo[real]
    xu[rows_idx[real], S[real]] += dhi[real]
    bounds: list[Any] = [None] * len(nodes)
    bounds[0] = (xl, xu)
    L: dict[int, np.ndarray] = {}
    U: dict[int, np.ndarray] = {}
    cone: dict[int, np.ndarray] = {}  # [B, D_j] bool: where box rows may differ from the clean box's
    eps_box: dict[int, np.ndarray] = {}
    row_lo: dict[int, np.ndarray] = {}  # per node: the least (largest) value of its rows over each box
    row_up: dict[int, np.ndarray] = {}
    rx = _Relax(net, bounds)
    last = net.last_use
    anchor = budget.width if ANCHOR and budget is not None and clean is not None and record is None else 0
    anchored = False
    # the first wide layers with each free scalar's coefficients over its own cone (``stem``)
    stem_last = stem.stem_end(prob, BUDGET_ROWS) if clean is not None and record is None and f else 0
    for j in range(1, len(nodes)):
        nd = nodes[j]
        tight = budget if nd.size <= BUDGET_ROWS or anchored else None
        if nd.kind == "linear" and j <= stem_last:
            step = _stem_input if j == 1 else _stem_conv
            step(prob, j, S, real, dlo, dhi, bounds, L, U, cone, eps_box, row_lo, row_up, clean, inside_ball, dev)
        elif nd.kind == "linear":
            bias = dev.put(nd.bias)
            lo_rows = xp.zeros((b, f + 1, nd.size))
            lo_rows[:, -1, :] = bias
            up_rows = lo_rows.copy()
            cen = np.broadcast_to(bias, (b, nd.size)).copy()
            rad = xp.zeros((b, nd.size))
            reach = xp.zeros((b, nd.size), dtype=bool) if clean is not None else None
            input_abs: dict[int, np.ndarray] = {}  # per input parent: |its free columns|
            for i, (p, w) in enumerate(zip(nd.parents, nd.mats)):
                il, iu = bounds[p]
                if p == 0:
                    if w is None:
                        cols = xp.zeros((b, f, nd.size))
                        cols[xp.arange(b)[:, None], xp.arange(f)[None, :], S] = real.astype(np.float64)
                        const = x0
                    else:
                        cols = nd.input_cols(i, S) * real[:, :, None]
                        const = dev.put(prob.input_term(j, i))
                    if reach is not None:
                        reach |= (cols != 0).any(axis=1)
                    lo_rows[:, :-1, :] += cols
                    up_rows[:, :-1, :] += cols
                    lo_rows[:, -1, :] += const
                    up_rows[:, -1, :] += const
                    # the exact interval of this term, from the few free columns
                    input_abs[i] = np.abs(cols)
                    cen += const + _weigh(cols, 0.5 * (dlo + dhi))
                    rad += _weigh(input_abs[i], 0.5 * (dhi - dlo))
                    continue
                lp, up = L[p], U[p]
                if w is None:
                    lo_rows += lp
                    up_rows += up
                    cen += 0.5 * (il + iu)
                    rad += 0.5 * (iu - il)
                    if reach is not None:
                        reach |= cone[p]
                    continue
                # L W+ + U W- = M W - R |W|,  U W+ + L W- = M W + R |W|  (M, R: mid, half-gap rows)
                # and the interval bound in the same two products: the coefficient rows, then the
                # constant rows (the rows', the interval's)
                cm = lp[:, :f] + up[:, :f]
                cm *= 0.5
                cg = up[:, :f] - lp[:, :f]
                cg *= 0.5
                mid = 0.5 * np.stack([lp[:, f] + up[:, f], il + iu], axis=1)
                gap = 0.5 * np.stack([up[:, f] - lp[:, f], iu - il], axis=1)
                if clean is not None and isinstance(w, ConvOp):
                    cmw, cgw, mw, rw, r = _conv_terms(nd, i, j, p, cm, cg, mid, gap, cone[p], clean, dev)
                    reach |= r  # type: ignore[operator]
                else:
                    cmw, cgw = apply_mat(cm, w), apply_mat(cg, nd.mat_abs(i))
                    mw, rw = apply_mat(mid, w), apply_mat(gap, nd.mat_abs(i))
                    if reach is not None:
                        if _convs_after(net, j):
                            reach |= apply_mat(cone[p].astype(np.float64), nd.mat_abs(i)) > 0
                        else:  # no convolution reads it: a superset (every output) costs nothing
                            reach |= cone[p].any(axis=1, keepdims=True)
                lo_rows[:, :f] += cmw
                lo_rows[:, :f] -= cgw
                up_rows[:, :f] += cmw
                up_rows[:, :f] += cgw
                lo_rows[:, f] += mw[:, 0] - rw[:, 0]
                up_rows[:, f] += mw[:, 0] + rw[:, 0]
                cen += mw[:, 1]
                rad += rw[:, 1]
            eps = _box_rounding(prob, j, bounds, S, real, dlo, dhi, cone, clean, inside_ball, input_abs, dev)
            if eps is not None:
                eps_box[j] = eps
                lo_rows[:, -1, :] -= eps
                up_rows[:, -1, :] += eps
                rad = rad + eps
            L[j], U[j] = lo_rows, up_rows
            if reach is not None:
                cone[j] = reach
            if j != net.output:
                if all(p == 0 for p in nd.parents) and tight is None:  # exact rows: bounds cen -+ rad
                    row_lo[j], row_up[j] = cen - rad, cen + rad
                else:
                    row_lo[j], row_up[j] = _lin_lower(lo_rows, dlo, dhi, tight), _lin_upper(up_rows, dlo, dhi, tight)
                l = np.maximum(cen - rad, row_lo[j])
                u = np.minimum(cen + rad, row_up[j])
                bounds[j] = (l, np.maximum(u, l))
        elif nd.kind == "maxpool":
            p = nd.parents[0]
            if clean is not None:
                cone[j] = pool_values(cone[p], nd, False).any(axis=-1)
                bounds[j], rx.cache[j] = _pool_over_cones(nd, bounds[p], cone[j], clean["pool"][j], dev)
            else:
                bounds[j] = nonlinear_interval(nd, *bounds[p])
            pr: PoolRelax = rx.get(j)
            if record is not None:
                record["pool"][j] = (bounds[j], pr)
            if pools_out is not None:
                pools_out[j] = pr
            if isinstance(L[p], stem.ConeRows):
                L[j] = U[j] = stem.pool_rows(prob, j, L[p], S, dlo, dhi, pr.istar, pr.slope, pr.off, bounds[j][1],
                                             cone[j], dev.put(clean["pool_up"][j]), dev)  # type: ignore[index]
            else:
                gi = np.broadcast_to(pr.istar[:, None, :], (b, f + 1, nd.size))
                L[j] = np.take_along_axis(L[p], gi, axis=2)
                # upper: off + sum_k slope_k x[idx_k] <= off + sum_k slope_k U_p[idx_k] (slopes >= 0),
                # a constant (at most ub) wherever no window input has a slope: only the windows with
                # one are computed; with cones, only each box's own (elsewhere its row is the clean
                # box's constant row)
                up_rows = xp.zeros((b, f + 1, nd.size))
                if clean is not None:
                    up_rows[:, -1, :] = dev.put(clean["pool_up"][j])
                    bi, ci = np.nonzero(cone[j])
                else:
                    up_rows[:, -1, :] = pr.off
                    ci = np.nonzero((pr.slope != 0).any(axis=(0, 2)))[0]
                    bi = None
                if ci.size:
                    win = dev.put(nd.pool_idx)[ci]
                    safe = np.where(win < 0, 0, win)  # padding has slope 0
                    if bi is None:
                        vals = np.moveaxis(U[p][:, :, safe], 1, -1)  # [B, C, K, F+1]
                        slope, off, ubj = pr.slope[:, ci, :], pr.off[:, ci], bounds[j][1][:, ci]
                        lo_d, hi_d = dlo[:, None, :], dhi[:, None, :]
                    else:
                        vals = U[p][bi[:, None], :, safe]  # [N, K, F+1]
                        slope, off, ubj = pr.slope[bi, ci], pr.off[bi, ci], bounds[j][1][bi, ci]
                        lo_d, hi_d = dlo[bi], dhi[bi]
                    sub = np.matmul(slope[..., None, :], vals)[..., 0, :]  # [..., F+1]
                    sub[..., -1] += off
                    # U_p's rows may reach above the interval bounds u_p (those are the tighter of
                    # two bounds): where this row's maximum over the box exceeds the interval bound,
                    # the constant is used, so that the row is never above it anywhere in the box.
                    # Both are valid; the tolerance keeps float64 noise from choosing (a row of the
                    # dominating input often reaches exactly its own bound), so that bounds over a
                    # box's cone equal those over the whole input
                    co = sub[..., :-1]
                    top = sub[..., -1] + (np.abs(co) * 0.5 * (hi_d - lo_d) + co * 0.5 * (hi_d + lo_d)).sum(axis=-1)
                    over = top > ubj + 1e-9 * (1.0 + np.abs(ubj))
                    sub = np.where(over[..., None], 0.0, sub)
                    sub[..., -1] = np.where(over, ubj, sub[..., -1])
                    if bi is None:
                        up_rows[:, :, ci] = np.moveaxis(sub, -1, 1)
                    else:
                        up_rows[bi, :, ci] = sub
                U[j] = up_rows
            if record is not None:
                record["pool_up"][j] = up_rows[0, -1].copy()
        else:
            p = nd.parents[0]
            l, u = bounds[p]
            bounds[j] = nonlinear_interval(nd, l, u)
            if clean is not None and j in clean["act"]:
                rx.cache[j] = _act_over_cones(nd, (l, u), cone[p], clean["act"][j], dev)
            sl, bl, su, bu = rx.get(j)
            if record is not None:
                record["act"][j] = (sl, bl, su, bu)
            lp, up = L[p], U[p]
            relu = nd.kind == "relu"  # its slopes lie in [0, 1]
            if isinstance(lp, stem.ConeRows):
                L[j] = U[j] = stem.activation_rows(lp, sl, bl, su, bu, relu, lp.idx)
            else:
                if relu:
                    lo_rows = sl[:, None, :] * lp
                    up_rows = su[:, None, :] * up
                else:
                    lo_rows = np.maximum(sl, 0)[:, None, :] * lp + np.minimum(sl, 0)[:, None, :] * up
                    up_rows = np.maximum(su, 0)[:, None, :] * up + np.minimum(su, 0)[:, None, :] * lp
                lo_rows[:, -1, :] += bl
                up_rows[:, -1, :] += bu
                L[j], U[j] = lo_rows, up_rows
            # tighten with the forward-mode rows; a nonnegative slope scales its row's bound
            # over the box, so a ReLU's rows are bounded by its parent's rows' bounds
            if relu and p in row_lo:
                row_lo[j], row_up[j] = sl * row_lo[p] + bl, su * row_up[p] + bu
            elif isinstance(L[j], stem.ConeRows):
                row_lo[j], row_up[j] = L[j].lower(dlo, dhi), L[j].upper(dlo, dhi)
            else:
                row_lo[j], row_up[j] = _lin_lower(L[j], dlo, dhi, tight), _lin_upper(U[j], dlo, dhi, tight)
            nl, nu = bounds[j]
            l2 = np.maximum(nl, row_lo[j])
            u2 = np.maximum(np.minimum(nu, row_up[j]), l2)
            bounds[j] = (l2, u2)
            if clean is not None:
                cone[j] = cone[p]
        if j == stem_last:  # the rows in full from here on
            L[j], U[j] = L[j].dense()
        if anchor and j == net.cut:
            rows = _anchor(prob, j, L[j], U[j], S, real, clean, anchor, dev)  # type: ignore[arg-type]
            if rows is not None:  # the rest of the network is a chain over the indicator columns too
                L[j], U[j] = rows
                dlo, dhi = _indicators(dlo, dhi, anchor)
                f = L[j].shape[1] - 1
                budget = Budget(budget.pixels, anchor + 1)  # type: ignore[union-attr]
                anchored = True
        if rows_out is not None and j == net.cut:
            rows_out[j] = (L[j], U[j])
        if record is not None and j != net.output:
            lj, uj = bounds[j]
            record["mid"][j] = np.stack([0.5 * (L[j][0, -1] + U[j][0, -1]), 0.5 * (lj[0] + uj[0])])
            record["gap"][j] = np.stack([0.5 * (U[j][0, -1] - L[j][0, -1]), 0.5 * (uj[0] - lj[0])])
            record["mag"][j] = np.maximum(np.abs(lj[0]), np.abs(uj[0]))
        for p in nd.parents:
            if last[p] == j and p != 0:
                for kept in (L, U, row_lo, row_up):
                    kept.pop(p, None)
                if cones_out is None:
                    cone.pop(p, None)
    if cones_out is not None:
        cones_out.update(cone)
    return bounds, L[net.output], U[net.output], eps_box


def box_bounds(prob: Problem, boxes: Boxes, ref: int, *, inside_ball: bool = True,
               budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower bounds ``[B, K-1]`` of the margins over each box, and the coefficients ``[B, K-1, F]``
    of the best forward-mode linear lower bound (a hint towards the worst corner).

    ``inside_ball=False``: the boxes may free more pixels than the ball ``prob`` was prepared for
    (``Problem.prepare_float32``), so none of the ball's float32 terms is used: each box's rounding
    and its final-Softmax slack come from its own bounds.

    ``budget``: each box is the L0 ball of size ``budget`` over its own pixels (its points that
    change at most that many of them, each within its range, which is widened to hold ``x0``): the
    margins and the narrow nodes are bounded by the top-k rule (``Budget``). Such a box lies in the
    ball when ``budget`` is at most the ball's size. A box must then free whole pixels, each once,
    scalars pixel by pixel (``Problem.pixel_scalars``); where pixels differ in their number of
    scalars the budget is dropped and the whole box bounded, outside the ball."""
    net = prob.net
    nodes = net.nodes
    # every array below lives on ``prob.arrays``'s device (``certify/arrays.py``); the results
    # come back to the host
    dev = prob.arrays
    limit = _budget(prob, boxes, budget)
    if budget is not None:
        inside_ball = inside_ball and limit is not None and budget <= prob.ball_size
        if limit is not None:  # a pixel left unchanged is x0, which the interval bounds must hold
            boxes = Boxes(boxes.S, np.minimum(boxes.dlo, 0.0), np.maximum(boxes.dhi, 0.0), boxes.depth)
    S_in, dlo_in, dhi_in = dev.asarray(boxes.S), dev.asarray(boxes.dlo), dev.asarray(boxes.dhi)
    real = S_in >= 0
    S = np.where(real, S_in, 0)
    dlo = np.where(real, dlo_in, 0.0)
    dhi = np.where(real, dhi_in, 0.0)
    clean = _clean(prob) if CONES and any(isinstance(w, ConvOp) for nd in nodes for w in nd.mats) else None
    cones: dict[int, np.ndarray] | None = {} if clean is not None and local.ENABLED else None
    pools: dict[int, PoolRelax] = {}
    cut_rows: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if STAGED and net.cut is not None else None
    bounds, lo_out, up_out, eps_box = _forward(prob, S_in, dlo_in, dhi_in, clean, inside_ball=inside_ball,
                                               cones_out=cones, pools_out=pools, rows_out=cut_rows, dev=dev,
                                               budget=limit)
    others = [k for k in range(net.n_outputs) if k != ref]
    rows = lo_out[:, :, ref : ref + 1] - up_out[:, :, others]  # [B, F+1, K-1]
    head: tuple[Any, Any, Budget | None] = (dlo, dhi, limit)  # the columns of the rows from the cut on
    scalars = slice(0, -1)
    if limit is not None and rows.shape[1] - 1 != S.shape[1]:  # anchored at the cut (``_anchor``)
        head = (*_indicators(dlo, dhi, limit.width), Budget(limit.pixels, limit.width + 1))
        scalars = _scalar_columns(S.shape[1], limit.width)
    fwd = _lin_lower(rows, *head)
    hint = np.transpose(rows[:, scalars, :], (0, 2, 1))
    if prob.exact_arithmetic:
        slack = dev.xp.zeros((len(boxes), 1))
    elif inside_ball:
        slack = dev.xp.full((len(boxes), 1), prob.final_slack)
    else:
        slack = _final_slack(prob, bounds)[:, None]
    lb = fwd.copy()
    # backward CROWN on the specification, with the intermediate bounds just found
    sel = np.nonzero((fwd <= 0).any(axis=1))[0]
    if sel.size:
        lb[sel] = np.maximum(lb[sel], _spec_backward(prob, bounds, sel, S, dlo, dhi, eps_box, ref, pools,
                                                     cut_rows=cut_rows, slack=slack[sel], budget=limit, head=head))
    if local.ENABLED and inside_ball:  # (host code)
        lb, slack, bounds, cones, eps_box, S, dlo, dhi = _host(dev, (lb, slack, bounds, cones, eps_box, S, dlo, dhi))
        _tighten_locally(prob, lb, slack, bounds, cones, eps_box, S, dlo, dhi, ref)
    return dev.get(lb - slack), dev.get(hint)


def _tighten_locally(prob: Problem, lb: np.ndarray, slack: np.ndarray, bounds: list[Any],
                     cones: dict[int, np.ndarray] | None, eps_box: dict[int, np.ndarray], S: np.ndarray,
                     dlo: np.ndarray, dhi: np.ndarray, ref: int) -> None:
    """Raise ``lb`` (in place) of the undecided boxes whose margins are all within reach (a box
    far below zero is split anyway) by bounding their intermediate neurons again over their cones
    (``certify/local.py``), then their margins."""
    net = prob.net
    m = lb - slack
    m0 = np.abs(clean_margins(prob, ref))[None, :]
    reach = -local.REACH * m0 if np.isfinite(local.REACH) else np.full_like(m0, -np.inf)  # inf * 0 is nan
    sel = np.nonzero((m <= 0).any(axis=1) & (m >= reach).all(axis=1))[0]
    if sel.size == 0:
        return
    sub = _take_bounds(bounds, sel)
    sub_cones = None if cones is None else {k: v[sel] for k, v in cones.items()}
    sub_eps = {k: v[sel] for k, v in eps_box.items()}
    tight = local.tighten(prob, S[sel], dlo[sel], dhi[sel], sub, sub_cones, sub_eps, _clean(prob),
                          spec_matrix(net.n_outputs, ref))
    lb[sel] = np.maximum(lb[sel], tight)
    # the local margins charge the float32 band of every value outside the cone at every
    # layer, the full-width pass each layer's own rounding once: where the local margins do
    # not decide, the full-width pass runs on the tightened bounds
    rest = np.nonzero((lb[sel] - slack[sel] <= 0).any(axis=1))[0]
    if rest.size:
        lb[sel[rest]] = np.maximum(lb[sel[rest]], _spec_backward(prob, sub, rest, S[sel], dlo[sel], dhi[sel], sub_eps, ref))


def clean_margins(prob: Problem, ref: int) -> np.ndarray:
    """``[K-1]``: the margins ``z_ref - z_k`` at the clean input (cached on ``prob``)."""
    cache = prob.__dict__.setdefault("_clean_margins", {})
    if ref not in cache:
        z0 = prob.net.forward(prob.x0[None])[0]
        cache[ref] = z0[ref] - np.delete(z0, ref)
    return cache[ref]


def _spec_backward(prob: Problem, bounds: list[Any], sel: np.ndarray, S: np.ndarray, dlo: np.ndarray,
                   dhi: np.ndarray, eps_box: dict[int, np.ndarray], ref: int,
                   pools: dict[int, PoolRelax] | None = None,
                   cut_rows: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                   slack: np.ndarray | None = None, budget: Budget | None = None,
                   head: tuple[Any, Any, Budget | None] | None = None) -> np.ndarray:
    """Backward CROWN on the margins of boxes ``sel``, with the intermediate ``bounds`` given (and
    the max-pools' relaxations over them, when already computed).

    With ``cut_rows`` (the forward-mode rows of the network's cut, ``Network.cut``), the pass
    stops at the cut first and bounds the margins there by those rows: what they prove (margins
    above ``slack``) costs no pass through the convolutions below; the rest go on to the input.
    ``head``: the ranges and budget of those rows' columns, where they differ from the input's
    (rows anchored at the cut, ``_anchor``)."""
    net = prob.net
    rx = _relax_of(net, bounds, sel, pools or {})
    c = backend_of(S).asarray(spec_matrix(net.n_outputs, ref))
    box = BoxInput(S[sel], dlo[sel], dhi[sel], budget)
    rounding = {k: v[sel] for k, v in eps_box.items()}
    if not cut_rows:
        return backward(prob, rx, net.output, c[None], None, sel.size, box=box, rounding=rounding)[0]
    k = net.cut
    assert k is not None
    c_k, a_k = backward(prob, rx, net.output, c[None], None, sel.size, box=box, rounding=rounding, stop=k)
    n = sel.size
    a_k = np.broadcast_to(a_k, (n,) + a_k.shape[1:])
    c_k = np.broadcast_to(c_k, (n,) + c_k.shape[1:])
    lk, uk = cut_rows[k]
    # a >= 0 takes the lower row, a < 0 the upper: a linear function of the free scalars [n, R, F+1]
    rows = (np.matmul(np.maximum(a_k, 0.0), np.swapaxes(lk[sel], 1, 2))
            + np.matmul(np.minimum(a_k, 0.0), np.swapaxes(uk[sel], 1, 2)))  # (batched BLAS: 4x einsum's speed)
    hlo, hhi, hbudget = head if head is not None else (dlo, dhi, budget)
    lb = c_k + _lin_lower(np.moveaxis(rows, 2, 1), hlo[sel], hhi[sel], hbudget)
    failing = lb - (0.0 if slack is None else slack) <= 0
    rest = np.nonzero(failing.any(axis=1))[0]
    if rest.size:
        # only the margins the cut did not prove go on: a proven margin stays proven, and the
        # pass costs in proportion to its rows
        dev = backend_of(lb)
        rows_idx = dev.asarray(failing_rows(dev.get(failing[rest])))  # (chosen on the host)
        rx_rest = _relax_of(net, rx.bounds, rest, {j: v for j, v in rx.cache.items() if j <= k})
        deep, _ = backward(prob, rx_rest, k, np.take_along_axis(a_k[rest], rows_idx[:, :, None], axis=1),
                           np.take_along_axis(c_k[rest], rows_idx, axis=1), rest.size,
                           box=BoxInput(box.S[rest], box.dlo[rest], box.dhi[rest], budget),
                           rounding={j: v[rest] for j, v in rounding.items()})
        at = (rest[:, None], rows_idx)
        lb[at] = np.maximum(lb[at], deep)
    return lb


def failing_rows(fail: np.ndarray) -> np.ndarray:
    """``[B, R']``: for each row of ``fail [B, R]`` (bool, at least one True each), the indices
    of its True entries, padded by repeating its first (``R'``: the most True entries of a row)."""
    pick = np.argsort(~fail, axis=1, kind="stable")[:, : int(fail.sum(axis=1).max())]
    return np.where(np.take_along_axis(fail, pick, axis=1), pick, pick[:, :1])


def _budget(prob: Problem, boxes: Boxes, budget: int | None) -> Budget | None:
    """The ``Budget`` of ``boxes`` (None: no budget, or pixels of unequal widths). Refuses a box
    that frees part of a pixel or a pixel twice: the top-k rule would count it wrongly."""
    if budget is None or not prob.pixel_width:
        return None
    w = prob.pixel_width
    b, f = boxes.S.shape
    if f % w:
        raise ValueError(f"a box with a pixel budget frees whole pixels ({w} scalars each): it has {f} columns")
    chunks = boxes.S.reshape(b, f // w, w)
    pix = np.where(chunks[:, :, 0] >= 0, prob.pixel[np.maximum(chunks[:, :, 0], 0)], -1)
    whole = np.where(pix[:, :, None] >= 0, prob.pixel_scalars[np.maximum(pix, 0)], -1)
    if not (chunks == whole).all():
        raise ValueError("a box with a pixel budget frees whole pixels, their scalars in order")
    pix = np.sort(pix, axis=1)
    if ((pix[:, 1:] == pix[:, :-1]) & (pix[:, 1:] >= 0)).any():
        raise ValueError("a box with a pixel budget frees each pixel once")
    return Budget(budget, w)


def _take_bounds(bounds: list[Any], idx: np.ndarray) -> list[Any]:
    """Every node's interval bounds of the boxes ``idx`` only."""
    return [None if bd is None else (bd[0][idx], bd[1][idx]) for bd in bounds]


def _relax_of(net: Any, bounds: list[Any], idx: np.ndarray, relaxations: dict[int, Any]) -> _Relax:
    """The relaxations of the boxes ``idx`` only: over their bounds, with the ones already
    computed (max-pools' ``PoolRelax``, activations' ``(sl, bl, su, bu)``) taken, not redone."""
    rx = _Relax(net, _take_bounds(bounds, idx))
    for j, v in relaxations.items():
        rx.cache[j] = v.take(idx) if isinstance(v, PoolRelax) else tuple(x[idx] for x in v)
    return rx


def _final_slack(prob: Problem, bounds: list[Any]) -> np.ndarray:
    """``[B]``: the final Softmax's slack (``Problem.prepare_float32``'s formula) from each box's
    own output magnitudes."""
    if prob.net.final is None:
        return backend_of(bounds[0][0]).xp.zeros(bounds[0][0].shape[0])
    mags = float32.magnitudes(bounds)
    return float32.FINAL_ALLOWANCE + float32.SAFETY * 4 * float32.U * float32.output_magnitude(prob.net, mags)
