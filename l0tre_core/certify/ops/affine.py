"""Affine operators: composed into the dense (or ``ConvOp``) matrices of linear nodes.

Operators: Gemm, MatMul, Add/Sub/Mul/Div/Neg, Conv, BatchNormalization (inference mode),
AveragePool, GlobalAveragePool, ReduceMean/ReduceSum, Cast (to float32/float64).

Every handler turns its input-dependent operand, a ``_Sym`` (``sum_n W_n v_n + bias`` over nodes
already built), into the ``_Sym`` of its output, by pushing an identity basis through a NumPy
implementation of the operator (``_push``) or by direct row algebra (``_rows``, ``_scale_rows``,
``_add_const``, ``_add_syms``). A convolution applied directly to a node's values whose dense
matrix would exceed ``network.DENSE_CONV_MAX`` entries stays structured (``ConvOp``: convolution
forward, transposed convolution backward; a following per-channel scale such as a folded
BatchNormalization is absorbed into its kernel).

What a reviewer must check for soundness:
- the map is the operator exactly: ``lin`` is its linear part, ``full`` adds its constants, and the
  NumPy implementation (``_ops.py``) agrees with onnxruntime (attributes, padding, ceil_mode);
- refusals: a product or quotient of two input-dependent values, a constant operand that changes
  the batch dimension, training-mode BatchNormalization, AveragePool with both ceil_mode and
  count_include_pad, casts to half precision or non-float types, reductions over the batch axis,
  dense matrices over ``network.MAX_DENSE`` entries;
- the float32 facts (``certify/float32.py``): ``mass`` pushes ``|A|`` (``lin_abs``, default
  ``lin`` for nonnegative maps) through the chain, ``bmass`` adds the magnitude of the operator's
  own constants, ``gsum`` adds ``gamma(fanin + 1)`` for an operator that sums ``fanin`` products
  (0 for moves) and ``gamma(1)`` for a scaling or constant addition that rounds; ``exact``/``mono``
  are kept only by moves and scalings (one nonzero per row and column) and lost where two paths
  from one node meet.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from l0tre_core.certify import _ops, float32, network
from l0tre_core.certify.arrays import backend_of
from l0tre_core.certify.network import SparseMap, StructuredMap, as_dense

if TYPE_CHECKING:
    from l0tre_core.certify.importer import _Importer

_CHUNK_ELEMS = 4_000_000
PAIR_BLOCK_MAX = 400_000  # entries of one dense block of ``ConvOp.apply_pair``
BACK_DENSE_MAX = 4_000_000  # entries of a convolution's dense matrix kept for ``ConvOp.back``
PAIR_CACHE_MAX = 2_000_000  # entries of the blocks one convolution keeps (twice: W and |W|; the zoo CNNs use 1.3-1.4 million)
_PAIR_LOCK = threading.Lock()  # the blocks' cache, shared by the threads that bound boxes


class _Sym:
    """A value that depends on the input: ``sum_n W_n v_n + bias`` over already built nodes.

    Beside the exact affine map it carries what bounds its float32 evaluation error: per parent
    ``mass[n] = |A_k|...|A_1| 1`` over the chain of operators that produced it (so every value
    along the chain is at most ``mass . max|v_n| + bmass`` in magnitude), ``bmass`` for the
    constants, and ``gsum``, the sum of the chain's relative rounding factors.

    ``exact[n]`` says that ``|A_k| ... |A_1|`` equals ``|W_n|`` (no two paths cancel), so the
    chain's values are bounded per element by ``|W_n| |v_n|``; ``mono[n]`` that ``W_n`` has at most
    one nonzero per row and per column (moves and scalings), which keeps ``exact`` through the
    next summing operator.
    """

    __slots__ = ("terms", "bias", "shape", "mass", "bmass", "gsum", "exact", "mono")

    def __init__(self, terms: dict[int, Any], bias: np.ndarray, shape: tuple[int, ...],
                 mass: dict[int, np.ndarray] | None = None, bmass: np.ndarray | None = None, gsum: float = 0.0,
                 exact: dict[int, bool] | None = None, mono: dict[int, bool] | None = None) -> None:
        self.terms = terms
        self.bias = np.asarray(bias, dtype=np.float64).reshape(shape)
        self.shape = tuple(int(s) for s in shape)
        n = self.size
        if mass is None:
            assert all(w is None for w in terms.values()), "an explicit map needs its mass"
            mass = {p: np.ones(n) for p in terms}
        self.mass = {p: np.asarray(m, dtype=np.float64).reshape(n) for p, m in mass.items()}
        self.bmass = np.abs(self.bias).reshape(n) if bmass is None else np.asarray(bmass, dtype=np.float64).reshape(n)
        self.gsum = float(gsum)
        self.exact = {p: True for p in terms} if exact is None else dict(exact)
        self.mono = {p: True for p in terms} if mono is None else dict(mono)

    def flags(self) -> dict[str, Any]:
        """The error bookkeeping unchanged, for operators that only move or scale values."""
        return {"exact": self.exact, "mono": self.mono}

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))



class ConvOp(StructuredMap):
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

    def row_abs_max(self) -> np.ndarray:
        wmax = np.abs(self.w).reshape(self.w.shape[0], -1).max(axis=1)
        return np.repeat(wmax, self.shape[0] // self.w.shape[0])

    def abs(self) -> "ConvOp":
        """``|W|``, built once (its blocks and dense matrix are kept on it)."""
        if self.__dict__.get("_abs") is None:
            self._abs = ConvOp(np.abs(self.w), self.in_shape, self.strides, self.pads, self.dilations, self.group)
        return self._abs

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
        out = backend_of(x).xp.empty((xs.shape[0], self.shape[0]))
        step = max(1, 4_000_000 // max(1, self.shape[1] * int(np.prod(self.w.shape[2:]))))
        for s in range(0, xs.shape[0], step):
            y = _ops.conv(xs[s : s + step], self.w, None, self.strides, self.pads, self.dilations, self.group)
            out[s : s + step] = y.reshape(y.shape[0], -1)
        return out.reshape(lead + (self.shape[0],))

    def _padded_extent(self) -> tuple[int, int]:
        """Height and width of the zero-padded input every output window reads from."""
        _, h, w_in = self.in_shape
        _, ho, wo = self.out_shape
        kh, kw = self.w.shape[2:]
        sh, sw = self.strides
        dh, dw = self.dilations
        return (max(h + self.pads[0] + self.pads[2], (ho - 1) * sh + (kh - 1) * dh + 1),
                max(w_in + self.pads[1] + self.pads[3], (wo - 1) * sw + (kw - 1) * dw + 1))

    def apply_local(self, x: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``W x`` for rows ``x [N, Din]`` that are zero outside ``support [N, Din]`` (bool), by
        convolving only a window around each row's support (the receptive-field cone of a few
        changed pixels), and a support of the result (``[N, Dout]`` bool, a superset: the
        window). Outputs outside the window read only zeros, so they are exactly zero."""
        n = x.shape[0]
        c, h, w_in = self.in_shape
        m_out, ho, wo = self.out_shape
        kh, kw = self.w.shape[2:]
        sh, sw = self.strides
        dh, dw = self.dilations
        pt, pl = self.pads[0], self.pads[1]
        dev = backend_of(x)
        # the windows' geometry on the host (a few numbers per row); the rows stay where they are
        y0, y1, x0, x1, some = (dev.get(v) for v in self._support_box(support))
        # an all-zero row: any window will do, take the smallest
        y0, y1, x0, x1 = (np.where(some, v, 0) for v in (y0, y1, x0, x1))
        oy0, oy1, ox0, ox1 = self._reached(y0, y1, x0, x1)
        hwin = int(max(1, (oy1 - oy0 + 1).max(initial=1)))
        wwin = int(max(1, (ox1 - ox0 + 1).max(initial=1)))
        if hwin == ho and wwin == wo:  # the whole output: the plain convolution, nothing to gather
            return self.apply(x), dev.xp.ones((n, self.shape[0]), dtype=bool)
        oy0 = np.minimum(oy0, ho - hwin)
        ox0 = np.minimum(ox0, wo - wwin)
        ih, iw = (hwin - 1) * sh + (kh - 1) * dh + 1, (wwin - 1) * sw + (kw - 1) * dw + 1
        # the windows, gathered straight from x (no padded copy of every row: rows of a few
        # pixels' cones are mostly zeros, and the copy cost more than the convolution)
        iy = (oy0 * sh)[:, None] + np.arange(ih)[None, :] - pt  # input coordinates, may fall in the pad
        ix = (ox0 * sw)[:, None] + np.arange(iw)[None, :] - pl
        vy, vx = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w_in)
        r = np.arange(n)[:, None, None, None]
        win = x.reshape(n, c, h, w_in)[r, np.arange(c)[None, :, None, None],
                                       np.clip(iy, 0, h - 1)[:, None, :, None], np.clip(ix, 0, w_in - 1)[:, None, None, :]]
        win *= dev.asarray(vy[:, None, :, None] & vx[:, None, None, :])
        y = _ops.conv(win, self.w, None, self.strides, [0, 0, 0, 0], self.dilations, self.group)
        out = dev.xp.zeros((n, m_out, ho, wo))
        oy = (oy0[:, None] + np.arange(hwin)[None, :])[:, None, :, None]
        ox = (ox0[:, None] + np.arange(wwin)[None, :])[:, None, None, :]
        mm = np.arange(m_out)[None, :, None, None]
        out[r, mm, oy, ox] = y
        reach = dev.xp.zeros((n, m_out, ho, wo), dtype=bool)
        reach[r, mm, oy, ox] = True
        return out.reshape(n, -1), reach.reshape(n, -1)

    def _support_box(self, support: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per row of ``support [N, Din]``: the bounding box ``y0, y1, x0, x1`` of the positions it
        holds in any channel, and whether it holds any (an empty row's box is meaningless)."""
        n = support.shape[0]
        c, h, w_in = self.in_shape
        sp = support.reshape(n, c, h * w_in).any(axis=1).reshape(n, h, w_in)
        rows_any, cols_any = sp.any(axis=2), sp.any(axis=1)
        return (np.argmax(rows_any, axis=1), h - 1 - np.argmax(rows_any[:, ::-1], axis=1),
                np.argmax(cols_any, axis=1), w_in - 1 - np.argmax(cols_any[:, ::-1], axis=1), rows_any.any(axis=1))

    def _reached(self, y0: Any, y1: Any, x0: Any, x1: Any) -> tuple[Any, ...]:
        """The output rows ``oy0..oy1`` and columns ``ox0..ox1`` (clipped to the output) whose
        windows meet the input box: ``oy*s - pad + k*d`` in ``[y0, y1]`` for some kernel offset k."""
        _, ho, wo = self.out_shape
        kh, kw = self.w.shape[2:]
        (sh, sw), (dh, dw), (pt, pl) = self.strides, self.dilations, self.pads[:2]
        return (np.clip(-((-(y0 + pt - (kh - 1) * dh)) // sh), 0, ho - 1), np.clip((y1 + pt) // sh, 0, ho - 1),
                np.clip(-((-(x0 + pl - (kw - 1) * dw)) // sw), 0, wo - 1), np.clip((x1 + pl) // sw, 0, wo - 1))

    def apply_pair(self, x: np.ndarray, x_abs: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``W x`` and ``|W| x_abs`` for rows ``[N, Din]`` that are zero outside ``support`` and whose
        support is small (the cone of one free scalar): rows are grouped by the bounding box of
        their support, and each group is one product with the dense block ``W[reached, box]``,
        built from the kernel and kept (``PAIR_CACHE_MAX``). A bounding-box window of the whole
        batch (``apply_local``) would convolve mostly zeros. Rows whose block would exceed
        ``PAIR_BLOCK_MAX`` entries go through ``apply_local``."""
        n = x.shape[0]
        _, h, w_in = self.in_shape
        dev = backend_of(x)
        # the grouping on the host (a few numbers per row); the rows and blocks on x's device
        y0, y1, x0, x1, some = (dev.get(v) for v in self._support_box(support))
        out, out_abs = dev.xp.zeros((n, self.shape[0])), dev.xp.zeros((n, self.shape[0]))
        key = ((y0 * h + y1) * w_in + x0) * w_in + x1
        rows = np.nonzero(some)[0]  # an all-zero row stays zero
        if rows.size == 0:  # (a split of no rows is one empty group)
            return out, out_abs
        rows = rows[np.argsort(key[rows], kind="stable")]
        cuts = np.flatnonzero(np.diff(key[rows])) + 1
        big = []
        for grp in np.split(rows, cuts):
            r = grp[0]
            block = self._pair_block(int(y0[r]), int(y1[r]), int(x0[r]), int(x1[r]))
            if block is None:
                big.append(grp)
                continue
            in_idx, out_idx, wt, wt_abs = block
            out[grp[:, None], out_idx[None, :]] = x[grp[:, None], in_idx[None, :]] @ dev.put(wt)
            out_abs[grp[:, None], out_idx[None, :]] = x_abs[grp[:, None], in_idx[None, :]] @ dev.put(wt_abs)
        if big:
            rest = np.concatenate(big)
            out[rest] = self.apply_local(x[rest], support[rest])[0]
            out_abs[rest] = self.abs().apply_local(x_abs[rest], support[rest])[0]
        return out, out_abs

    def _pair_block(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, ...] | None:
        """For the input box ``[y0, y1] x [x0, x1]`` (every channel): its flat indices, those of the
        outputs whose window meets it, and the dense block ``W[outputs, box]`` transposed, with
        its absolute value; None when the block exceeds ``PAIR_BLOCK_MAX`` entries. Kept per box
        while the kept blocks hold at most ``PAIR_CACHE_MAX`` entries (the oldest dropped first)."""
        cache = self.__dict__.setdefault("_pair_blocks", {})
        key = (y0, y1, x0, x1)
        if key in cache:
            return cache[key]
        c, h, w_in = self.in_shape
        m_out, ho, wo = self.out_shape
        kh, kw = self.w.shape[2:]
        sh, sw = self.strides
        dh, dw = self.dilations
        pt, pl = self.pads[0], self.pads[1]
        oy0, oy1, ox0, ox1 = (int(v) for v in self._reached(y0, y1, x0, x1))
        n_in = c * (y1 - y0 + 1) * (x1 - x0 + 1)
        n_out = m_out * max(0, oy1 - oy0 + 1) * max(0, ox1 - ox0 + 1)
        if n_in * n_out > PAIR_BLOCK_MAX:
            return None
        ch, iy, ix = (a.reshape(-1) for a in np.meshgrid(np.arange(c), np.arange(y0, y1 + 1), np.arange(x0, x1 + 1), indexing="ij"))
        m, oy, ox = (a.reshape(-1) for a in np.meshgrid(np.arange(m_out), np.arange(oy0, oy1 + 1), np.arange(ox0, ox1 + 1), indexing="ij"))
        # input (ch, iy, ix) meets output (m, oy, ox) at kernel offset (ky, kx) when
        # iy = oy*sh - pt + ky*dh, within the kernel, and ch lies in m's group
        ry = iy[:, None] - oy[None, :] * sh + pt
        rx = ix[:, None] - ox[None, :] * sw + pl
        ky, kx = ry // dh, rx // dw
        cg, mg = c // self.group, m_out // self.group
        ok = ((ry % dh == 0) & (rx % dw == 0) & (ky >= 0) & (ky < kh) & (kx >= 0) & (kx < kw)
              & ((ch // cg)[:, None] == (m // mg)[None, :]))
        vals = self.w[m[None, :], (ch % cg)[:, None], np.clip(ky, 0, kh - 1), np.clip(kx, 0, kw - 1)]
        wt = np.where(ok, vals, 0.0)  # [in, out]
        block = ((ch * h + iy) * w_in + ix, (m * ho + oy) * wo + ox, wt, np.abs(wt))
        with _PAIR_LOCK:  # (the cover bounds batches of blocks in threads)
            kept = self.__dict__.get("_pair_kept", 0) + wt.size
            while cache and kept > PAIR_CACHE_MAX:  # the oldest first
                kept -= cache.pop(next(iter(cache)))[2].size
            cache[key] = block
            self._pair_kept = kept
        return block

    def back(self, a: np.ndarray) -> np.ndarray:
        """``a W``: the transposed convolution of ``a [..., Dout]`` (a product with the dense
        matrix, kept, when it has at most ``BACK_DENSE_MAX`` entries: BLAS beats the
        transposed convolution's scattered sums there)."""
        lead = a.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        a2 = a.reshape(n, self.shape[0])
        dev = backend_of(a)
        if self.shape[0] * self.shape[1] <= BACK_DENSE_MAX:
            if getattr(self, "_dense", None) is None:
                self._dense = self.dense()
            return (a2 @ dev.put(self._dense)).reshape(lead + (self.shape[1],))
        out = dev.xp.empty((n, self.shape[1]))
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
        hp, wp = self._padded_extent()
        dev = backend_of(a2)
        w = dev.put(self.w)
        out = dev.xp.zeros((n, c, hp, wp))
        for gi in range(g):
            ag = dev.xp.ascontiguousarray(a4[:, gi * mg : (gi + 1) * mg, :].transpose(0, 2, 1)).reshape(n * ho * wo, mg)
            wg = w[gi * mg : (gi + 1) * mg].reshape(mg, cg * kh * kw)
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
        return self.rows(np.arange(self.shape[0]))  # from the kernel: no convolution of a basis



# ----------------------------------------------------------------------------------------------
# the affine algebra of ``_Sym``


def break_chain(imp: _Importer, sym: _Sym, out_size: int) -> _Sym:
    """``sym`` itself, or, when composing the next operator (``out_size`` outputs) with it would
    need a dense matrix too large to hold, a new linear node holding its value and ``sym`` as
    that node's identity: the next operator then applies to the node directly, in structured form."""
    too_big = any(w is not None and (out_size * imp.nodes[n].size > network.MAX_DENSE
                                     or (isinstance(w, StructuredMap) and w.shape[0] * w.shape[1] > network.MAX_DENSE))
                  for n, w in sym.terms.items())
    if not too_big:
        return sym
    j = imp.materialize(sym, force_new=True)
    return _Sym({j: None}, np.zeros(sym.shape), sym.shape)


def _push(imp: _Importer, sym: _Sym, lin: Callable[[np.ndarray], np.ndarray], full: Callable[[np.ndarray], np.ndarray],
          lin_abs: Callable[[np.ndarray], np.ndarray] | None = None, fanin: int = 0,
          sparse: Callable[[], SparseMap] | None = None) -> _Sym:
    """Apply an affine operator (``lin``: linear part on a batch, ``full``: with its bias).

    ``lin_abs`` applies ``|A|`` (default ``lin``: right for operators whose matrix is
    nonnegative, such as moves, padding and averages); ``fanin`` is the number of products
    summed per output, 0 for operators that only move values (they round nothing). ``sparse``
    gives the operator in gather form, used where its dense matrix would be too large."""
    lin_abs = lin_abs or lin
    bias_out = full(sym.bias[None])
    out_shape = tuple(bias_out.shape[1:])
    out_size = int(np.prod(out_shape, dtype=np.int64))
    if sparse is not None:
        sym = break_chain(imp, sym, out_size)
    terms: dict[int, Any] = {}
    for n, w in sym.terms.items():
        n_in = imp.nodes[n].size
        if out_size * n_in > network.MAX_DENSE:
            if w is None and sparse is not None:
                terms[n] = _checked(imp, sparse(), lin, sym.shape)
                continue
            raise imp.unsupported(
                f"its dense matrix ({out_size} x {n_in}) exceeds the size bound propagation handles"
            )
        if isinstance(w, StructuredMap):
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
    return _Sym(terms, bias_out[0], out_shape, *_push_mass(sym, lin_abs, full, fanin), **_push_flags(sym, fanin))


def _checked(imp: _Importer, m: SparseMap, lin: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> SparseMap:
    """The gather form of an operator, checked against the operator itself on random inputs."""
    x = np.random.default_rng(0).standard_normal((2, m.shape[1]))
    want = lin(x.reshape((2,) + shape)).reshape(2, -1)
    if want.shape[1] != m.shape[0] or not np.allclose(m.apply(x), want, rtol=1e-12, atol=1e-12):
        raise imp.unsupported("its gather form does not reproduce the operator")
    return m


def moves(lin: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> SparseMap:
    """The gather form of an operator that only moves values (padding with zeros, slicing):
    pushing the numbers 1..D through it shows where each output comes from."""
    n_in = int(np.prod(shape, dtype=np.int64))
    src = lin(np.arange(1, n_in + 1, dtype=np.float64).reshape((1,) + shape)).reshape(-1)
    idx = np.rint(src).astype(np.int64) - 1
    return SparseMap(idx[:, None], np.ones((idx.size, 1)), n_in)


def _push_flags(sym: _Sym, fanin: int) -> dict[str, Any]:
    if not fanin:  # a move: one nonzero per row and column
        return sym.flags()
    return {"exact": {n: sym.exact[n] and sym.mono[n] for n in sym.terms}, "mono": {n: False for n in sym.terms}}


def _push_mass(sym: _Sym, lin_abs: Callable[[np.ndarray], np.ndarray], full: Callable[[np.ndarray], np.ndarray],
               fanin: int) -> tuple[dict[int, np.ndarray], np.ndarray, float]:
    def through(v: np.ndarray) -> np.ndarray:
        return lin_abs(v.reshape((1,) + sym.shape))[0].reshape(-1)

    own_bias = np.abs(full(np.zeros((1,) + sym.shape))[0].reshape(-1))
    mass = {n: through(m) for n, m in sym.mass.items()}
    return mass, through(sym.bmass) + own_bias, sym.gsum + (float32.gamma(fanin + 1) if fanin else 0.0)


def _rows(sym: _Sym, idx: np.ndarray, shape: tuple[int, ...], imp: _Importer | None = None) -> _Sym:
    """Select/permute/repeat rows: ``out_flat = in_flat[idx]`` (``imp``: kept in gather form where
    a dense matrix would be too large)."""
    if imp is not None:
        sym = break_chain(imp, sym, idx.size)
    terms: dict[int, Any] = {}
    for n, w in sym.terms.items():
        if w is None and imp is not None and idx.size * sym.size > network.MAX_DENSE:
            terms[n] = SparseMap(idx[:, None], np.ones((idx.size, 1)), sym.size)
        elif w is None:
            m = np.zeros((idx.size, sym.size))
            m[np.arange(idx.size), idx] = 1.0
            terms[n] = m
        else:
            terms[n] = as_dense(w)[idx]
    repeats = np.unique(idx).size < idx.size  # a broadcast: one value feeds several
    return _Sym(terms, sym.bias.reshape(-1)[idx], shape, {n: m[idx] for n, m in sym.mass.items()},
                sym.bmass[idx], sym.gsum, sym.exact, {n: v and not repeats for n, v in sym.mono.items()})


def _reshape(imp: _Importer, sym: _Sym, shape: tuple[int, ...]) -> _Sym:
    if int(np.prod(shape, dtype=np.int64)) != sym.size:
        raise imp.unsupported(f"cannot reshape {sym.shape} to {shape} per sample")
    return _Sym(dict(sym.terms), sym.bias.reshape(shape), shape, sym.mass, sym.bmass, sym.gsum, **sym.flags())


def _scale_rows(sym: _Sym, c: np.ndarray) -> _Sym:
    c = c.reshape(-1)
    terms: dict[int, Any] = {}
    for n, w in sym.terms.items():
        if w is None and c.size * c.size > network.MAX_DENSE:
            terms[n] = SparseMap(np.arange(c.size)[:, None], c[:, None], c.size)
        elif w is None:
            terms[n] = np.diag(c)
        elif isinstance(w, SparseMap):
            terms[n] = w.scaled(c)
        elif isinstance(w, ConvOp):
            sc = w.scaled(c)
            terms[n] = sc if sc is not None else c[:, None] * w.dense()
        else:
            terms[n] = c[:, None] * w
    ac = np.abs(c)
    exact = bool(np.all((ac == 1.0) | (ac == 0.0)))  # sign changes round nothing
    return _Sym(terms, sym.bias.reshape(-1) * c, sym.shape, {n: m * ac for n, m in sym.mass.items()},
                sym.bmass * ac, sym.gsum + (0.0 if exact else float32.gamma(1)), **sym.flags())


def _broadcast_sym(imp: _Importer, sym: _Sym, shape: tuple[int, ...]) -> _Sym:
    if shape == sym.shape:
        return sym
    src = np.arange(sym.size).reshape((1,) + sym.shape)
    try:
        idx = np.broadcast_to(src, (1,) + shape)[0].reshape(-1)
    except ValueError as exc:
        raise imp.unsupported(f"cannot broadcast {sym.shape} to {shape}") from exc
    return _rows(sym, idx, shape)


def _bshape(imp: _Importer, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        full = np.broadcast_shapes(*shapes)
    except ValueError as exc:
        raise imp.unsupported(f"shapes {shapes} do not broadcast") from exc
    rank = max(len(s) for s in shapes if s is not None)
    if full[0] != 1 or len(full) != rank:
        raise imp.unsupported("a constant operand would change the batch dimension")
    return tuple(full[1:])


def _add_const(imp: _Importer, sym: _Sym, c: np.ndarray, sign: float = 1.0) -> _Sym:
    """``sign * sym + c`` with broadcasting."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > len(sym.shape) + 1:
        raise imp.unsupported("a constant operand of higher rank than the batch-shaped input")
    shape = _bshape(imp, (1,) + sym.shape, c.shape)
    s = _broadcast_sym(imp, sym, shape)
    if sign != 1.0:
        s = _scale_rows(s, np.full(s.size, sign))
    cb = np.broadcast_to(c, (1,) + shape)[0]
    return _Sym(s.terms, s.bias + cb, shape, s.mass, s.bmass + np.abs(cb).reshape(-1),
                s.gsum + (float32.gamma(1) if np.any(cb) else 0.0), **s.flags())


def _mul_const(imp: _Importer, sym: _Sym, c: np.ndarray) -> _Sym:
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > len(sym.shape) + 1:
        raise imp.unsupported("a constant operand of higher rank than the batch-shaped input")
    shape = _bshape(imp, (1,) + sym.shape, c.shape)
    s = _broadcast_sym(imp, sym, shape)
    cb = np.broadcast_to(c, (1,) + shape)[0]
    return _scale_rows(s, cb)


def _add_syms(imp: _Importer, a: _Sym, b: _Sym, sign: float) -> _Sym:
    shape = _bshape(imp, (1,) + a.shape, (1,) + b.shape)
    a = _broadcast_sym(imp, a, shape)
    b = _broadcast_sym(imp, b, shape)
    shared = set(a.terms) & set(b.terms)
    if any(a.size * imp.nodes[n].size > network.MAX_DENSE for n in shared):
        # two paths from one large node (a residual connection): one side becomes a node of its
        # own rather than both being summed into a dense matrix
        b = _Sym({imp.materialize(b, force_new=True): None}, np.zeros(b.shape), b.shape)
    if sign != 1.0:
        b = _scale_rows(b, np.full(b.size, sign))
    terms = dict(a.terms)
    mass = dict(a.mass)
    for n, m in b.mass.items():
        mass[n] = mass[n] + m if n in mass else m
    for n, w in b.terms.items():
        if n in terms:
            w0 = terms[n]
            size = imp.nodes[n].size
            terms[n] = (np.eye(size) if w0 is None else as_dense(w0)) + (np.eye(size) if w is None else as_dense(w))
        else:
            terms[n] = w
    both = set(a.terms) & set(b.terms)  # two paths from one node may cancel
    exact = {n: n not in both and (a.exact.get(n, True) and b.exact.get(n, True)) for n in terms}
    mono = {n: n not in both and (a.mono.get(n, True) and b.mono.get(n, True)) for n in terms}
    return _Sym(terms, a.bias + b.bias, shape, mass, a.bmass + b.bmass, max(a.gsum, b.gsum) + float32.gamma(1),
                exact, mono)


# ----------------------------------------------------------------------------------------------
# handlers


def _op_Gemm(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    if ins[0] not in imp.syms or ins[1] not in imp.consts:
        raise imp.unsupported("only input @ constant is supported")
    x = imp.sym(ins[0])
    if a.get("transA", 0):
        raise imp.unsupported("transA on the input-dependent operand")
    if len(x.shape) != 1:
        raise imp.unsupported(f"Gemm on a per-sample shape {x.shape}")
    w = imp.const(ins[1]).astype(np.float64)
    if a.get("transB", 0):
        w = w.T
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    c = None
    if len(ins) > 2 and ins[2]:
        c = imp.const(ins[2]).astype(np.float64)
        if c.ndim == 2 and c.shape[0] != 1:
            raise imp.unsupported("a bias with a batch dimension")
        c = np.broadcast_to(c.reshape(-1) if c.ndim else c, (w.shape[1],)) * beta
    wm = alpha * w

    def lin(v: np.ndarray) -> np.ndarray:
        return v @ wm

    def full(v: np.ndarray) -> np.ndarray:
        out = v @ wm
        return out + c if c is not None else out

    aw = np.abs(wm)
    return _push(imp, x, lin, full, lambda v: v @ aw, fanin=wm.shape[0])


def _op_MatMul(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    if ins[0] not in imp.syms or ins[1] not in imp.consts:
        raise imp.unsupported("only input @ constant is supported")
    x = imp.sym(ins[0])
    w = imp.const(ins[1]).astype(np.float64)
    if w.ndim != 2:
        raise imp.unsupported("only a 2-D constant right operand is supported")
    if w.shape[0] != x.shape[-1]:
        raise imp.unsupported("shape mismatch")
    aw = np.abs(w)
    return _push(imp, x, lambda v: v @ w, lambda v: v @ w, lambda v: v @ aw, fanin=w.shape[0])


def _binary(imp: _Importer, ins: list[str], kind: str) -> _Sym:
    l_sym, r_sym = ins[0] in imp.syms, ins[1] in imp.syms
    if l_sym and r_sym:
        if kind in ("Add", "Sub"):
            return _add_syms(imp, imp.sym(ins[0]), imp.sym(ins[1]), 1.0 if kind == "Add" else -1.0)
        raise imp.unsupported("both operands depend on the input")
    if l_sym:
        x, c = imp.sym(ins[0]), imp.const(ins[1]).astype(np.float64)
        if kind == "Add":
            return _add_const(imp, x, c)
        if kind == "Sub":
            return _add_const(imp, x, -c)
        if kind == "Mul":
            return _mul_const(imp, x, c)
        return _mul_const(imp, x, 1.0 / c)
    x, c = imp.sym(ins[1]), imp.const(ins[0]).astype(np.float64)
    if kind == "Add":
        return _add_const(imp, x, c)
    if kind == "Sub":
        return _add_const(imp, x, c, sign=-1.0)
    if kind == "Mul":
        return _mul_const(imp, x, c)
    raise imp.unsupported("division by an input-dependent value")


def _op_Add(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    return _binary(imp, ins, "Add")


def _op_Sub(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    return _binary(imp, ins, "Sub")


def _op_Mul(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    return _binary(imp, ins, "Mul")


def _op_Div(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    return _binary(imp, ins, "Div")


def _op_Neg(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    return _scale_rows(x, np.full(x.size, -1.0))


def _op_Conv(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    w = imp.const(ins[1]).astype(np.float64)
    b = imp.const(ins[2]).astype(np.float64) if len(ins) > 2 and ins[2] else None
    n_sp = w.ndim - 2
    if len(x.shape) != n_sp + 1:
        raise imp.unsupported(f"input shape {x.shape} does not fit the kernel {w.shape}")
    group = int(a.get("group", 1))
    if x.shape[0] != w.shape[1] * group:
        raise imp.unsupported("channel count does not fit the weight")
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * n_sp))
    dil = list(a.get("dilations", [1] * n_sp))
    pads = _ops.resolve_pads(x.shape[1:], kernel, strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))

    def lin(v: np.ndarray) -> np.ndarray:
        return _ops.conv(v, w, None, strides, pads, dil, group)

    def full(v: np.ndarray) -> np.ndarray:
        return _ops.conv(v, w, b, strides, pads, dil, group)

    aw = np.abs(w)

    def lin_abs(v: np.ndarray) -> np.ndarray:
        return _ops.conv(v, aw, None, strides, pads, dil, group)

    fanin = int(np.prod(w.shape[1:]))
    probe = _ops.conv(np.zeros((1,) + x.shape), w, None, strides, pads, dil, group)
    x = break_chain(imp, x, int(probe.size))

    # a convolution applied directly to a node's values stays structured when its dense
    # matrix would be large (the transposed convolution is much cheaper than a dense product)
    direct = {n: t for n, t in x.terms.items() if t is None}
    if n_sp in (1, 2) and direct:
        op = ConvOp(w, x.shape, strides, pads, dil, group)
        if op.shape[0] * op.shape[1] > network.DENSE_CONV_MAX:
            rest = _Sym({n: t for n, t in x.terms.items() if t is not None}, x.bias, x.shape,
                        {n: m for n, m in x.mass.items() if n not in direct}, x.bmass, x.gsum,
                        {n: v for n, v in x.exact.items() if n not in direct}, {n: v for n, v in x.mono.items() if n not in direct})
            out = _push(imp, rest, lin, full, lin_abs, fanin)
            for n in direct:
                out.terms[n] = op
                out.mass[n] = lin_abs(x.mass[n].reshape((1,) + x.shape))[0].reshape(-1)
                out.exact[n], out.mono[n] = True, False
            return out
    return _push(imp, x, lin, full, lin_abs, fanin)


def _op_BatchNormalization(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    if a.get("training_mode", 0):
        raise imp.unsupported("training mode")
    x = imp.sym(ins[0])
    scale, bias, mean, var = (imp.const(i).astype(np.float64) for i in ins[1:5])
    eps = float(a.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    shift = bias - s * mean
    shp = (1, x.shape[0]) + (1,) * (len(x.shape) - 1)
    out = _add_const(imp, _mul_const(imp, x, s.reshape(shp)), shift.reshape(shp))
    # onnxruntime rounds the folded scale and shift themselves (sqrt, division, products)
    out.gsum += float32.gamma(4)
    return out


def _op_AveragePool(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    n_sp = len(x.shape) - 1
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * n_sp))
    dil = list(a.get("dilations", [1] * n_sp))
    pads = _ops.resolve_pads(x.shape[1:], kernel, strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))
    ceil_mode = bool(a.get("ceil_mode", 0))
    cip = bool(a.get("count_include_pad", 0))
    if ceil_mode and cip:
        raise imp.unsupported("ceil_mode with count_include_pad")

    def f(v: np.ndarray) -> np.ndarray:
        return _ops.avgpool(v, kernel, strides, pads, dil, ceil_mode, cip)

    def sparse() -> SparseMap:
        try:
            idx, _ = _ops.maxpool_index(x.shape[0], x.shape[1:], kernel, strides, pads, dil, ceil_mode)
        except ValueError as exc:
            raise imp.unsupported(str(exc)) from exc
        # each window's weight: the average of ones over it, spread over its real inputs
        ones = f(np.ones((1,) + x.shape)).reshape(-1)
        n_valid = (idx >= 0).sum(axis=1)
        return SparseMap(idx, np.broadcast_to((ones / n_valid)[:, None], idx.shape), x.size)

    return _push(imp, x, f, f, fanin=int(np.prod(kernel)) + 1, sparse=sparse)


def _op_GlobalAveragePool(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    n_sp = len(x.shape) - 1

    def f(v: np.ndarray) -> np.ndarray:
        return v.mean(axis=tuple(range(2, 2 + n_sp)), keepdims=True)

    def sparse() -> SparseMap:
        per = int(np.prod(x.shape[1:]))
        idx = np.arange(x.size).reshape(x.shape[0], per)
        return SparseMap(idx, np.full(idx.shape, 1.0 / per), x.size)

    return _push(imp, x, f, f, fanin=int(np.prod(x.shape[1:])) + 1, sparse=sparse)


def _reduce(imp: _Importer, ins: list[str], a: dict[str, Any], mean: bool) -> _Sym:
    x = imp.sym(ins[0])
    rank = len(x.shape) + 1
    axes = imp.axes(ins, a)
    if axes is None:
        if a.get("noop_with_empty_axes", 0):
            return x
        raise imp.unsupported("reducing over the batch axis")
    axes_t = tuple(sorted(ax + rank if ax < 0 else ax for ax in axes))
    if 0 in axes_t:
        raise imp.unsupported("reducing over the batch axis")
    keep = bool(a.get("keepdims", 1))

    def f(v: np.ndarray) -> np.ndarray:
        return v.mean(axis=axes_t, keepdims=keep) if mean else v.sum(axis=axes_t, keepdims=keep)

    reduced = int(np.prod([((1,) + x.shape)[ax] for ax in axes_t]))
    return _push(imp, x, f, f, fanin=reduced + 1)


def _op_ReduceMean(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    return _reduce(imp, ins, a, True)


def _op_ReduceSum(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    return _reduce(imp, ins, a, False)


def _op_Cast(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    import onnx

    to = int(a.get("to", 0))
    if to in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        # onnxruntime rounds to half precision there (fp16(1000.2) = 1000), which the float32
        # error model does not cover
        raise imp.unsupported("a cast of input-dependent values to half precision rounds them, which bound propagation does not model")
    if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise imp.unsupported("a cast of input-dependent values to a non-float type")
    return imp.sym(ins[0])


HANDLERS: dict[str, Callable[..., Any]] = {
    "Gemm": _op_Gemm,
    "MatMul": _op_MatMul,
    "Add": _op_Add,
    "Sub": _op_Sub,
    "Mul": _op_Mul,
    "Div": _op_Div,
    "Neg": _op_Neg,
    "Conv": _op_Conv,
    "BatchNormalization": _op_BatchNormalization,
    "AveragePool": _op_AveragePool,
    "GlobalAveragePool": _op_GlobalAveragePool,
    "ReduceMean": _op_ReduceMean,
    "ReduceSum": _op_ReduceSum,
    "Cast": _op_Cast,
}
