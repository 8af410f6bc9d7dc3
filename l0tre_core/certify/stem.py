"""The stem: a box's forward-mode rows through the network's first layers up to the dense head (a
convolution of the input, then activations, max-pools and convolutions in a chain), kept over each
free scalar's own cone.

A free scalar's coefficient in a neuron's rows is zero wherever the scalar's pixel does not reach
(``pixel_cones``): a few dozen neurons of a convolution's thousands. ``ConeRows`` holds each
scalar's coefficients there only (``[B, F, C]``) and the rows' constants in full (``[B, D]``), so
a block of F pixels costs about ``F C + D`` per node instead of ``F D``; a convolution maps a
scalar's coefficients by one dense block per cone of its input (``conv_blocks``).
``boxes._forward`` takes the stem this way and the rows in full from its last node on; the rows,
and so every bound, are the ones it computes in full (``tests/test_certify_stem.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from l0tre_core.certify.arrays import ArrayBackend, add_at, backend_of
from l0tre_core.certify.network import apply_mat
from l0tre_core.certify.ops.activation import pool_values
from l0tre_core.certify.ops.affine import ConvOp

if TYPE_CHECKING:
    from l0tre_core.certify.problem import Problem

# the stem is taken (False: the rows in full from the first node, as before)
ENABLED = True
# pixels x neurons past which the pixels' cones are not built (no stem, no anchoring)
CONES_MAX = 50_000_000
# entries of a convolution's blocks (one per cone of its input, ``conv_blocks``) past which the
# stem ends before it
BLOCKS_MAX = 4_000_000


def pixel_cones(prob: "Problem", k: int) -> np.ndarray | None:
    """``[P, D_k]`` bool: the neurons of node ``k`` each pixel reaches (its scalars' structural
    cone: the neurons whose value may change when that pixel alone changes). It depends on the
    network and the pixel map only, not on the input: cached on the network (0.1 s per input on
    the max-pool CNN otherwise). None where the map would exceed ``CONES_MAX`` entries."""
    cache = prob.net.__dict__.setdefault("_pixel_cones", {})
    pixels = (prob.P, prob.pixel.tobytes())
    if (k, pixels) not in cache:
        nodes = prob.net.nodes
        if prob.P * sum(nd.size for nd in nodes[: k + 1]) > CONES_MAX:
            cache[(k, pixels)] = None
            return None
        reach = np.zeros((prob.P, nodes[0].size), dtype=bool)
        reach[prob.pixel, np.arange(prob.pixel.size)] = True
        cache[(0, pixels)] = reach
        for j in range(1, k + 1):  # each node's cones kept: the stem asks for them node by node
            if (j, pixels) in cache:
                continue
            nd = nodes[j]
            if nd.kind == "linear":
                r = np.zeros((prob.P, nd.size), dtype=bool)
                for i, p in enumerate(nd.parents):
                    m = nd.mat_abs(i)
                    r |= cache[(p, pixels)] if m is None else apply_mat(cache[(p, pixels)].astype(np.float64), m) > 0
            elif nd.kind == "maxpool":
                r = pool_values(cache[(nd.parents[0], pixels)], nd, False).any(axis=-1)
            else:  # elementwise
                r = cache[(nd.parents[0], pixels)]
            cache[(j, pixels)] = r
    return cache[(k, pixels)]


def cone_index(prob: "Problem", k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per pixel, the neurons of node ``k`` it reaches as a list ``idx [P, C]`` (padding: ``D_k``,
    one past the last neuron) and each neuron's place in it ``pos [P, D_k + 1]`` (-1: not
    reached; the padding neuron too). Cached on the network; None where ``pixel_cones`` is."""
    cache = prob.net.__dict__.setdefault("_cone_index", {})
    key = (k, prob.P, prob.pixel.tobytes())
    if key not in cache:
        reach = pixel_cones(prob, k)
        if reach is None:
            cache[key] = None
            return None
        p, d = reach.shape
        counts = reach.sum(axis=1)
        pix, neuron = np.nonzero(reach)  # pixel by pixel, neurons in order
        slot = np.arange(pix.size) - np.concatenate([[0], np.cumsum(counts)[:-1]])[pix]
        idx = np.full((p, int(counts.max(initial=1))), d, dtype=np.int64)
        idx[pix, slot] = neuron
        pos = np.full((p, d + 1), -1, dtype=np.int64)
        pos[pix, neuron] = slot
        cache[key] = (idx, pos)
    return cache[key]


def stem_end(prob: "Problem", budget_rows: int) -> int:
    """The last node of the stem (0: none): node 1 a convolution of the input alone, then nodes
    that each read only the one before and are read by the next only: activations, max-pools and
    convolutions whose blocks fit (``conv_blocks``). It ends before a node at most ``budget_rows``
    wide other than a max-pool (its bounds take a pixel budget, which the stem does not), and at
    the network's cut at the latest (its rows are then in full)."""
    net = prob.net
    nodes = net.nodes
    if not ENABLED or len(nodes) < 3:
        return 0
    first = nodes[1]
    if not (first.kind == "linear" and first.parents == [0] and isinstance(first.mats[0], ConvOp)):
        return 0
    end = 0
    stop = min(net.cut + 1 if net.cut is not None else len(nodes), net.output)
    for j in range(1, stop):
        nd = nodes[j]
        if j > 1 and nd.parents != [j - 1]:
            break
        if j > 1 and nd.kind == "linear" and not (isinstance(nd.mats[0], ConvOp) and conv_blocks(prob, j)):
            break
        narrow = nd.size <= budget_rows and nd.kind != "maxpool"  # (a max-pool's bounds take no budget)
        if narrow or net.last_use[j] != j + 1 or cone_index(prob, j) is None:
            break
        end = j
    return end


def conv_blocks(prob: "Problem", j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For node ``j``, a convolution of node ``p``: per pixel, which block is its (``[P]``), and
    the blocks ``W[cone_j, cone_p]`` transposed with their absolute values (``[U, C_p, C_j]``
    each), one per distinct cone at ``p``: the map from a free scalar's coefficients at ``p`` to
    those at ``j``. Cached on the network; None where the blocks would exceed ``BLOCKS_MAX``."""
    cache = prob.net.__dict__.setdefault("_conv_blocks", {})
    key = (j, prob.P, prob.pixel.tobytes())
    if key not in cache:
        nd = prob.net.nodes[j]
        p = nd.parents[0]
        got_p, got_j = cone_index(prob, p), cone_index(prob, j)
        if got_p is None or got_j is None:
            cache[key] = None
            return None
        (idx_p, _), (idx_j, _) = got_p, got_j
        cones, first, which = np.unique(idx_p, axis=0, return_index=True, return_inverse=True)
        if cones.shape[0] * idx_p.shape[1] * idx_j.shape[1] > BLOCKS_MAX:
            cache[key] = None
            return None
        d_p = prob.net.nodes[p].size
        blocks = np.zeros((cones.shape[0], idx_p.shape[1], idx_j.shape[1]))
        for u, (cone, pix) in enumerate(zip(cones, first)):
            unit = np.zeros((cone.size, d_p + 1))
            unit[np.arange(cone.size), cone] = 1.0  # the padding column is dropped below
            out = apply_mat(unit[:, :d_p], nd.mats[0])  # [C_p, D_j]: the columns of W at the cone
            at = idx_j[pix]
            blocks[u] = np.where(at < nd.size, out[:, np.minimum(at, nd.size - 1)], 0.0)
        cache[key] = (np.asarray(which).reshape(-1), blocks, np.abs(blocks))
    return cache[key]


def input_table(prob: "Problem", j: int) -> np.ndarray:
    """``[n_scalars, C]``: each input scalar's column of node ``j``'s convolution at the neurons
    its pixel reaches (``cone_index``; 0 at the padding). Cached on the network."""
    cache = prob.net.__dict__.setdefault("_stem_cols", {})
    key = (j, prob.P, prob.pixel.tobytes())
    if key not in cache:
        nd = prob.net.nodes[j]
        idx, _ = cone_index(prob, j)  # type: ignore[misc]
        n = prob.x0.size
        at = idx[prob.pixel]  # [n, C]
        table = np.zeros(at.shape)
        step = max(1, 4_000_000 // max(1, nd.size))
        for s in range(0, n, step):  # the dense columns a few at a time (W^T may be large)
            cols = nd.input_cols(0, np.arange(s, min(n, s + step)))  # [m, D]
            part = at[s : s + step]
            got = np.take_along_axis(cols, np.minimum(part, nd.size - 1), axis=1)
            table[s : s + step] = np.where(part < nd.size, got, 0.0)
        cache[key] = table
    return cache[key]


@dataclass
class ConeRows:
    """Lower and upper forward-mode rows of one node over boxes, each free scalar's coefficients
    at the neurons its pixel reaches only."""

    idx: np.ndarray  # [B, F, C] the neuron of each coefficient (padding: D, coefficient 0)
    lo: np.ndarray  # [B, F, C] the lower rows' coefficients
    up: np.ndarray  # [B, F, C] the upper rows'
    lo0: np.ndarray  # [B, D] the lower rows' constants
    up0: np.ndarray  # [B, D] the upper rows'

    @property
    def size(self) -> int:
        return int(self.lo0.shape[1])

    def at(self, v: np.ndarray) -> np.ndarray:
        """``v [B, D]`` at each coefficient's neuron ``[B, F, C]`` (the padding reads neuron 0)."""
        b, f, c = self.idx.shape
        safe = np.minimum(self.idx, self.size - 1).reshape(b, f * c)
        return np.take_along_axis(v, safe, axis=1).reshape(b, f, c)

    def scatter(self, v: np.ndarray) -> np.ndarray:
        """``v [B, F, C]`` summed per neuron: ``[B, D]``."""
        xp = backend_of(v).xp
        b, f, c = self.idx.shape
        out = xp.zeros((b, self.size + 1))
        add_at(out, (xp.broadcast_to(xp.arange(b)[:, None, None], self.idx.shape), self.idx), v)
        return out[:, :-1]

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows in full, ``[B, F+1, D]`` each (constants last)."""
        xp = backend_of(self.lo).xp
        b, f, c = self.idx.shape
        real = self.idx < self.size
        bb = xp.broadcast_to(xp.arange(b)[:, None, None], self.idx.shape)[real]
        ff = xp.broadcast_to(xp.arange(f)[None, :, None], self.idx.shape)[real]
        nn = self.idx[real]
        out = []
        for co, const in ((self.lo, self.lo0), (self.up, self.up0)):
            rows = xp.zeros((b, f + 1, self.size))
            rows[bb, ff, nn] = co[real]
            rows[:, -1, :] = const
            out.append(rows)
        return out[0], out[1]

    def lower(self, dlo: np.ndarray, dhi: np.ndarray) -> np.ndarray:
        """The least value of the lower rows over each box ``[B, D]`` (``boxes._lin_lower``)."""
        return self.lo0 + self.scatter(np.minimum(self.lo * dlo[:, :, None], self.lo * dhi[:, :, None]))

    def upper(self, dlo: np.ndarray, dhi: np.ndarray) -> np.ndarray:
        return self.up0 + self.scatter(np.maximum(self.up * dlo[:, :, None], self.up * dhi[:, :, None]))


def input_rows(prob: "Problem", j: int, S: np.ndarray, real: np.ndarray, const: np.ndarray,
               dev: ArrayBackend) -> ConeRows:
    """Node ``j``'s rows (a convolution of the input): each free scalar's column at the neurons
    its pixel reaches, and the constant ``const [D]`` (the bias and ``W x0``) for every box."""
    idx, _ = cone_index(prob, j)  # type: ignore[misc]
    at = dev.put(idx)[dev.put(prob.pixel)[S]]  # [B, F, C]
    cols = dev.put(input_table(prob, j))[S] * real[:, :, None]
    b = S.shape[0]
    lo0 = dev.xp.broadcast_to(const, (b, const.size)).copy()
    return ConeRows(at, cols, cols, lo0, lo0.copy())


def activation_rows(rows: ConeRows, sl: np.ndarray, bl: np.ndarray, su: np.ndarray, bu: np.ndarray,
                    relu: bool, idx: np.ndarray) -> ConeRows:
    """An activation's rows from its input's ``rows`` and its relaxation ``sl z + bl <= f(z) <=
    su z + bu`` (``[B, D]`` each), as ``boxes._forward`` forms them in full; ``idx``: the
    activation's cone lists (its input's: an elementwise node reaches what its input reaches)."""
    sl_c, su_c = rows.at(sl), rows.at(su)
    if relu:  # slopes in [0, 1]
        lo, up = sl_c * rows.lo, su_c * rows.up
        lo0, up0 = sl * rows.lo0, su * rows.up0
    else:
        lo = np.maximum(sl_c, 0) * rows.lo + np.minimum(sl_c, 0) * rows.up
        up = np.maximum(su_c, 0) * rows.up + np.minimum(su_c, 0) * rows.lo
        lo0 = np.maximum(sl, 0) * rows.lo0 + np.minimum(sl, 0) * rows.up0
        up0 = np.maximum(su, 0) * rows.up0 + np.minimum(su, 0) * rows.lo0
    return ConeRows(idx, lo, up, lo0 + bl, up0 + bu)


def pool_rows(prob: "Problem", j: int, rows: ConeRows, S: np.ndarray, dlo: np.ndarray, dhi: np.ndarray,
              istar: np.ndarray, slope: np.ndarray, off: np.ndarray, ub: np.ndarray, cone: np.ndarray,
              clean_up: np.ndarray, dev: ArrayBackend) -> ConeRows:
    """A max-pool's rows from its input's ``rows``, as ``boxes._forward`` forms them in full: the
    lower row of the window input ``istar [B, D]``; the upper row ``off + sum_k slope_k U[win_k]``
    on the box's ``cone [B, D]``, replaced by the interval bound ``ub`` where it reaches above it
    anywhere in the box, and elsewhere the clean box's constant ``clean_up [D]``."""
    nd = prob.net.nodes[j]
    p = nd.parents[0]
    xp = dev.xp
    b, f, _ = rows.idx.shape
    d = nd.size
    idx, _ = cone_index(prob, j)  # type: ignore[misc]
    _, pos_p = cone_index(prob, p)  # type: ignore[misc]
    pix = dev.put(prob.pixel)[S]  # [B, F]
    at = dev.put(idx)[pix]  # [B, F, C]
    c = at.shape[2]
    real = at < d
    safe = np.minimum(at, d - 1).reshape(b, f * c)
    pos_p = dev.put(pos_p)

    def parent_coef(co: np.ndarray, neuron: np.ndarray) -> np.ndarray:
        """``co [B, F, Cp]`` (the input's coefficients) at input neurons ``neuron [B, F, ...]``:
        0 where the scalar's pixel does not reach them."""
        q = pos_p[pix.reshape(b, f, *([1] * (neuron.ndim - 2))), neuron]
        got = np.take_along_axis(co, np.maximum(q, 0).reshape(b, f, -1), axis=2).reshape(q.shape)
        return np.where(q >= 0, got, 0.0)

    # lower: the row of the window input with the largest lower bound
    src = np.take_along_axis(istar, safe, axis=1).reshape(b, f, c)
    lo = np.where(real, parent_coef(rows.lo, src), 0.0)
    lo0 = np.take_along_axis(rows.lo0, istar, axis=1)
    # upper: slope-weighted sum of the window's upper rows
    win = dev.put(nd.pool_idx)  # [D, K] (padding -1: slope 0)
    if int((slope != 0).sum(axis=-1).max(initial=0)) <= 1:
        # the relaxation frees at most one input of each window (``pool_relax_windows``): its row
        # alone, not the window's K rows with K - 1 zero slopes
        k = np.argmax(slope, axis=-1)[:, :, None]  # [B, D, 1]
        s1 = np.take_along_axis(slope, k, axis=-1)[:, :, 0]
        src = np.take_along_axis(np.broadcast_to(win, slope.shape), k, axis=-1)[:, :, 0]
        src = np.where(s1 != 0, src, rows.size)  # (no free input: the padding neuron, coefficient 0)
        up0 = s1 * np.take_along_axis(rows.up0, np.minimum(src, rows.size - 1), axis=1) + off
        up = np.take_along_axis(s1, safe, axis=1).reshape(b, f, c) * parent_coef(
            rows.up, np.take_along_axis(src, safe, axis=1).reshape(b, f, c))
    else:
        wins = win[np.minimum(at, d - 1)]  # [B, F, C, K]
        w_slope = np.take_along_axis(slope, safe[:, :, None], axis=1).reshape(b, f, c, -1)
        up = (w_slope * parent_coef(rows.up, np.where(wins < 0, rows.size, wins))).sum(axis=-1)
        up0 = (slope * pool_values(rows.up0, nd, 0.0)).sum(axis=-1) + off
    up = np.where(real, up, 0.0)
    mid, half = 0.5 * (dlo + dhi), 0.5 * (dhi - dlo)
    out = ConeRows(at, lo, up, lo0, up0)
    top = up0 + out.scatter(np.abs(up) * half[:, :, None] + up * mid[:, :, None])
    over = cone & (top > ub + 1e-9 * (1.0 + np.abs(ub)))
    out.up = np.where(out.at(over), 0.0, up)
    out.up0 = np.where(cone, np.where(over, ub, up0), xp.broadcast_to(clean_up, (b, d)))
    return out


def owned(rows: ConeRows, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The free scalars' cone lists of ``rows`` with the padding scalars' emptied (``[B, F, C]``,
    padding: ``D``), and which entries each scalar owns: a neuron that several of a box's scalars
    reach belongs to the first of them only (so a row over the box's cone is the sum of its owned
    parts)."""
    xp = backend_of(rows.idx).xp
    d = rows.size
    at = np.where(real[:, :, None], rows.idx, d)
    b = at.shape[0]
    keys = (xp.arange(b)[:, None, None] * (d + 1) + at).reshape(-1)
    order = xp.argsort(keys, kind="stable")
    first = xp.ones(keys.size, dtype=bool)
    first[order[1:]] = keys[order[1:]] != keys[order[:-1]]
    return at, first.reshape(at.shape) & (at < d)


def conv_rows(prob: "Problem", j: int, rows: ConeRows, S: np.ndarray, real: np.ndarray, dev: ArrayBackend,
              through: np.ndarray, through_abs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Node ``j``'s (a convolution of the stem node ``p`` before it, whose rows are ``rows``)
    coefficient rows: each free scalar's ``W cm`` and ``|W| cg`` over its cone (``cm``, ``cg``:
    the mid and half-gap of its input coefficients, as ``boxes._forward`` forms them), and its cone
    lists; and ``W through``, ``|W| through_abs`` for rows ``[B, R, D_p]`` that are zero outside
    the box's cone at ``p`` (differences from the clean box), each box's ``[B, R, D_j]``, by the
    same blocks: each part a scalar owns (``owned``) goes through its block. Last, the box's cone
    at ``j`` (the union of its scalars' cones, ``[B, D_j]``)."""
    which, blocks, blocks_abs = conv_blocks(prob, j)  # type: ignore[misc]
    nd = prob.net.nodes[j]
    idx, _ = cone_index(prob, j)  # type: ignore[misc]
    xp = dev.xp
    pix = dev.put(prob.pixel)[S]  # [B, F]
    b, f, c = rows.idx.shape
    d = nd.size
    at_p, own = owned(rows, real)

    def parts(v: np.ndarray) -> np.ndarray:  # [B, R, D_p] -> each scalar's owned part [B*F, R, C]
        r = v.shape[1]
        pad = xp.concatenate([v, xp.zeros((b, r, 1))], axis=2)
        got = np.take_along_axis(pad, np.broadcast_to(at_p.reshape(b, 1, f * c), (b, r, f * c)), axis=2)
        got = got.reshape(b, r, f, c) * own[:, None]
        return np.moveaxis(got, 1, 2).reshape(b * f, r, c)

    cm = 0.5 * (rows.lo + rows.up)
    cg = 0.5 * (rows.up - rows.lo)
    xw = xp.concatenate([cm.reshape(b * f, 1, c), parts(through)], axis=1)  # [B*F, 1+R, C]
    xa = xp.concatenate([cg.reshape(b * f, 1, c), parts(through_abs)], axis=1)
    ids = dev.get(dev.put(which)[pix]).reshape(-1)
    order = np.argsort(ids, kind="stable")
    cuts = np.flatnonzero(np.diff(ids[order])) + 1
    yw = xp.empty(xw.shape[:2] + (blocks.shape[2],))
    ya = xp.empty(xa.shape[:2] + (blocks.shape[2],))
    on_dev, on_dev_abs = dev.put(blocks), dev.put(blocks_abs)
    # one product per distinct block in the batch (a scalar's pixel picks its block)
    for grp in np.split(order, cuts):
        u = int(ids[grp[0]])
        g = dev.asarray(grp)
        yw[g] = xw[g] @ on_dev[u]
        ya[g] = xa[g] @ on_dev_abs[u]
    at = dev.put(idx)[pix]  # [B, F, C_j]

    def summed(y: np.ndarray) -> np.ndarray:  # [B*F, R, C_j] -> per box [B, R, D_j]
        r = y.shape[1]
        out = xp.zeros((b, r, d + 1))
        bb = xp.broadcast_to(xp.arange(b)[:, None, None, None], (b, f, r, at.shape[2]))
        rr = xp.broadcast_to(xp.arange(r)[None, None, :, None], bb.shape)
        add_at(out, (bb, rr, xp.broadcast_to(at[:, :, None, :], bb.shape)), y.reshape(b, f, r, -1))
        return out[:, :, :d]

    cone = xp.zeros((b, d + 1), dtype=bool)
    cone[xp.broadcast_to(xp.arange(b)[:, None, None], at.shape), np.where(real[:, :, None], at, d)] = True
    return (yw[:, 0].reshape(b, f, -1), ya[:, 0].reshape(b, f, -1), at, summed(yw[:, 1:]), summed(ya[:, 1:]),
            cone[:, :d])
