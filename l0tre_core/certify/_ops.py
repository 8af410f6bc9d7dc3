"""NumPy reference implementations of the ONNX operators bound propagation understands.

Every function works on a batch: the leading axis is the batch (or, when a weight matrix is built,
the columns of an identity basis pushed through the operator). Only float64 arithmetic is used.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from l0tre_core.certify.arrays import backend_of, module_of


def _sliding_window_view(x: np.ndarray, shape: Sequence[int], axis: tuple[int, ...]) -> np.ndarray:
    """``sliding_window_view`` of ``x``'s own array module (NumPy's does not dispatch to CuPy's)."""
    m = module_of(x)
    if m is np:
        return sliding_window_view(x, shape, axis=axis)
    return m.lib.stride_tricks.sliding_window_view(x, shape, axis=axis)


def resolve_pads(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
) -> list[int]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` after resolving ``auto_pad``."""
    n = len(spatial)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            out = -(-spatial[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i], 0)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                begin.append(small)
                end.append(big)
            else:
                begin.append(big)
                end.append(small)
        return begin + end
    raise ValueError(f"auto_pad {auto_pad!r}")


def pool_out_size(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool) -> int:
    ext = (k - 1) * d + 1
    num = size + pb + pe - ext
    if ceil_mode:
        out = -(-num // s) + 1
        # the last window must start inside the input or the begin padding
        if (out - 1) * s >= size + pb:
            out -= 1
    else:
        out = num // s + 1
    return out


def windows(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    fill: float,
    ceil_mode: bool = False,
) -> np.ndarray:
    """``x [N, C, *S]`` -> ``[N, C, *S_out, *K]``: every window, padded with ``fill``."""
    n = len(kernel)
    spatial = x.shape[2:]
    outs = [
        pool_out_size(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n], ceil_mode)
        for i in range(n)
    ]
    # pad enough at the end for the last window
    pad_width = [(0, 0), (0, 0)]
    for i in range(n):
        ext = (kernel[i] - 1) * dilations[i] + 1
        need = (outs[i] - 1) * strides[i] + ext
        end = max(need - spatial[i] - pads[i], 0)
        pad_width.append((pads[i], end))
    xpad = np.pad(x, pad_width, mode="constant", constant_values=fill)
    exts = [(kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    v = _sliding_window_view(xpad, exts, axis=tuple(range(2, 2 + n)))
    sl = [slice(None), slice(None)]
    sl += [slice(0, (outs[i] - 1) * strides[i] + 1, strides[i]) for i in range(n)]
    sl += [slice(None, None, dilations[i]) for i in range(n)]
    return v[tuple(sl)]


def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> np.ndarray:
    """ONNX Conv on ``x [N, C, *S]`` with ``w [M, C/group, *K]``."""
    n_sp = w.ndim - 2
    kernel = w.shape[2:]
    win = windows(x, kernel, strides, dilations, pads, 0.0)  # [N, C, *So, *K]
    nb, c = x.shape[0], x.shape[1]
    so = win.shape[2 : 2 + n_sp]
    m = w.shape[0]
    cg, mg = c // group, m // group
    kprod = int(np.prod(kernel))
    dev = backend_of(x)
    w = dev.put(w)
    out = dev.xp.empty((nb, m, int(np.prod(so))), dtype=np.float64)
    # move channels next to the kernel axes: [N, *So, C, *K]
    perm = (0,) + tuple(range(2, 2 + n_sp)) + (1,) + tuple(range(2 + n_sp, 2 + 2 * n_sp))
    wt = np.transpose(win, perm)
    for g in range(group):
        sel = [slice(None)] * wt.ndim
        sel[1 + n_sp] = slice(g * cg, (g + 1) * cg)
        part = wt[tuple(sel)]
        cols = dev.xp.ascontiguousarray(part).reshape(nb * int(np.prod(so)), cg * kprod)
        wg = w[g * mg : (g + 1) * mg].reshape(mg, cg * kprod)
        res = cols @ wg.T  # [N*So, mg]
        out[:, g * mg : (g + 1) * mg, :] = res.reshape(nb, -1, mg).transpose(0, 2, 1)
    out = out.reshape((nb, m) + tuple(so))
    if b is not None:
        out += b.reshape((1, m) + (1,) * n_sp)
    return out


def avgpool(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> np.ndarray:
    n_sp = len(kernel)
    win = windows(x, kernel, strides, dilations, pads, 0.0, ceil_mode)
    s = win.sum(axis=tuple(range(-n_sp, 0)))
    # divisor: count the real input positions (and the explicit padding when asked)
    spatial = x.shape[2:]
    real = np.ones((1, 1) + tuple(spatial))
    real_w = windows(real, kernel, strides, dilations, pads, 0.0, ceil_mode).sum(axis=tuple(range(-n_sp, 0)))
    if count_include_pad:
        padded = np.pad(real, [(0, 0), (0, 0)] + [(pads[i], pads[i + n_sp]) for i in range(n_sp)], constant_values=1.0)
        inner = windows(padded, kernel, strides, dilations, [0] * (2 * n_sp), 0.0, ceil_mode)
        div = inner.sum(axis=tuple(range(-n_sp, 0)))
        # ceil_mode windows hanging past the padding: crop to the same output shape
        div = div[(slice(None), slice(None)) + tuple(slice(0, k) for k in s.shape[2:])]
        if div.shape != real_w.shape:
            div = np.broadcast_to(float(np.prod(kernel)), real_w.shape)
    else:
        div = real_w
    return s / div


def maxpool_index(
    channels: int,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    ceil_mode: bool,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """For each output of a MaxPool, the flat indices of its window's inputs (-1 for padding)."""
    n_sp = len(kernel)
    ids = np.arange(channels * int(np.prod(spatial)), dtype=np.float64).reshape((1, channels) + tuple(spatial))
    win = windows(ids, kernel, strides, dilations, pads, -1.0, ceil_mode)  # [1, C, *So, *K]
    out_shape = (channels,) + tuple(win.shape[2 : 2 + n_sp])
    idx = win.reshape(int(np.prod(out_shape)), -1).astype(np.int64)
    # keep the valid ones first so column 0 is always a real input
    order = np.argsort(idx < 0, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    keep = (idx >= 0).any(axis=0)
    idx = idx[:, keep]
    if (idx[:, 0] < 0).any():
        raise ValueError("a MaxPool window covers only padding")
    return idx, out_shape


def sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out
