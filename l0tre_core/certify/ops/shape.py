"""Shape operators: moves of values (and constant padding), composed into linear nodes.

Operators: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Pad (constant mode), Slice,
Identity/Dropout (inference: the identity), Shape (yields a constant).

What a reviewer must check for soundness:
- the batch axis stays first and untouched: reshapes, flattens, squeezes, transposes, slices,
  paddings and concatenations that would move, merge or cut it are refused;
- each move is the operator exactly (``_rows`` with the right index permutation, or ``_push``
  through the NumPy operator), and Pad's constant value enters only the bias (``full``), never the
  linear part (``lin``);
- the float32 facts: moves round nothing (``_push`` with ``fanin`` 0, ``_rows`` and ``_reshape``
  keep ``mass``, ``bmass``, ``gsum``, ``exact``), a broadcast loses ``mono``; Concat places each
  part's ``mass``/``bmass`` on its rows and keeps the largest ``gsum``;
- Identity may pass on a dropped final Softmax (``_Final``); Dropout's mask output is never
  produced, so a consumer of it is refused later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from l0tre_core.certify.network import as_dense
from l0tre_core.certify.ops.affine import _push, _reshape, _rows, _Sym, moves

if TYPE_CHECKING:
    from l0tre_core.certify.importer import _Importer


def _op_Flatten(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    rank = len(x.shape) + 1
    axis = int(a.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        # [1, N*D]: per sample (batch 1) this is the flattened sample
        return _reshape(imp, x, (x.size,))
    lead = int(np.prod(x.shape[: axis - 1], dtype=np.int64))
    if lead != 1:
        raise imp.unsupported("Flatten would merge samples into the batch axis")
    return _reshape(imp, x, (x.size,))


def _op_Reshape(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    target = [int(v) for v in imp.const(ins[1]).reshape(-1)]
    allowzero = int(a.get("allowzero", 0))
    if not target or target[0] not in (1, 0, -1) or (target[0] == 0 and allowzero):
        raise imp.unsupported(f"target shape {target} does not keep the batch axis first")
    full_in = (1,) + x.shape
    rest = []
    for i, t in enumerate(target[1:], start=1):
        if t == 0 and not allowzero:
            if i >= len(full_in):
                raise imp.unsupported(f"target shape {target}")
            rest.append(full_in[i])
        else:
            rest.append(t)
    if rest.count(-1) > 1 or (target[0] == -1 and -1 in rest):
        raise imp.unsupported(f"target shape {target} is ambiguous per sample")
    if -1 in rest:
        known = int(np.prod([r for r in rest if r != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            raise imp.unsupported(f"target shape {target}")
        rest[rest.index(-1)] = x.size // known
    if int(np.prod(rest, dtype=np.int64)) != x.size:
        raise imp.unsupported(f"target shape {target} merges samples")
    return _reshape(imp, x, tuple(rest))


def _op_Squeeze(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    rank = len(x.shape) + 1
    axes = imp.axes(ins, a)
    if axes is None:
        axes = [i + 1 for i, s in enumerate(x.shape) if s == 1]
    axes = [ax + rank if ax < 0 else ax for ax in axes]
    if 0 in axes:
        raise imp.unsupported("squeezing the batch axis")
    shape = tuple(s for i, s in enumerate(x.shape, start=1) if i not in axes)
    return _reshape(imp, x, shape)


def _op_Unsqueeze(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    axes = imp.axes(ins, a) or []
    rank = len(x.shape) + 1 + len(axes)
    axes = sorted(ax + rank if ax < 0 else ax for ax in axes)
    if 0 in axes:
        raise imp.unsupported("unsqueezing before the batch axis")
    full = list((1,) + x.shape)
    for ax in axes:
        full.insert(ax, 1)
    return _reshape(imp, x, tuple(full[1:]))


def _op_Transpose(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    rank = len(x.shape) + 1
    perm = list(a.get("perm", list(range(rank))[::-1]))
    if perm[0] != 0:
        raise imp.unsupported("transposing the batch axis")
    sp = [p - 1 for p in perm[1:]]
    idx = np.arange(x.size).reshape(x.shape).transpose(sp).reshape(-1)
    return _rows(x, idx, tuple(x.shape[p] for p in sp), imp)


def _op_Concat(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    parts = []
    for i in ins:
        if i in imp.syms:
            parts.append(imp.sym(i))
        else:
            c = imp.const(i).astype(np.float64)
            if c.ndim == 0 or c.shape[0] != 1:
                raise imp.unsupported("a constant operand with a batch dimension other than 1")
            parts.append(_Sym({}, c[0], c.shape[1:]))
    rank = len(parts[0].shape) + 1
    axis = int(a["axis"])
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise imp.unsupported("concatenation along the batch axis")
    ax = axis - 1
    shapes = [p.shape for p in parts]
    out_shape = list(shapes[0])
    out_shape[ax] = sum(s[ax] for s in shapes)
    out_shape_t = tuple(out_shape)
    pos = np.arange(int(np.prod(out_shape_t, dtype=np.int64))).reshape(out_shape_t)
    out_n = pos.size
    terms: dict[int, np.ndarray | None] = {}
    bias = np.zeros(out_n)
    mass: dict[int, np.ndarray] = {}
    bmass = np.zeros(out_n)
    exact: dict[int, bool] = {}
    mono: dict[int, bool] = {}
    start = 0
    for p in parts:
        sl = [slice(None)] * len(out_shape_t)
        sl[ax] = slice(start, start + p.shape[ax])
        start += p.shape[ax]
        rows = pos[tuple(sl)].reshape(-1)
        bias[rows] = p.bias.reshape(-1)
        bmass[rows] = p.bmass
        for n, m in p.mass.items():
            mono[n] = n not in mass and p.mono[n]
            exact[n] = exact.get(n, True) and p.exact[n]
            mass.setdefault(n, np.zeros(out_n))[rows] = m
        for n, w in p.terms.items():
            if n not in terms:
                terms[n] = np.zeros((out_n, imp.nodes[n].size))
            t = terms[n]
            assert t is not None
            if w is None:
                t[rows, np.arange(p.size)] += 1.0
            else:
                t[rows] += as_dense(w)
    return _Sym(terms, bias, out_shape_t, mass, bmass, max(p.gsum for p in parts), exact, mono)


def _op_Pad(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    if a.get("mode", "constant") != "constant":
        raise imp.unsupported(f"mode {a.get('mode')}")
    pads = [int(v) for v in (imp.const(ins[1]).reshape(-1) if len(ins) > 1 and ins[1] else a.get("pads", []))]
    value = 0.0
    if len(ins) > 2 and ins[2]:
        value = float(np.asarray(imp.const(ins[2])).reshape(-1)[0])
    elif "value" in a:
        value = float(a["value"])
    rank = len(x.shape) + 1
    axes = list(range(rank))
    if len(ins) > 3 and ins[3]:
        axes = [int(v) + rank if int(v) < 0 else int(v) for v in imp.const(ins[3]).reshape(-1)]
    n = len(axes)
    width = [(0, 0)] * rank
    for i, ax in enumerate(axes):
        width[ax] = (pads[i], pads[i + n])
    if width[0] != (0, 0) or any(p < 0 for pw in width for p in pw):
        raise imp.unsupported("padding of the batch axis or negative padding")

    def lin(v: np.ndarray) -> np.ndarray:
        return np.pad(v, width)

    def full(v: np.ndarray) -> np.ndarray:
        return np.pad(v, width, constant_values=value)

    return _push(imp, x, lin, full, sparse=lambda: moves(lin, x.shape))


def _op_Slice(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    x = imp.sym(ins[0])
    rank = len(x.shape) + 1
    if len(ins) > 1:
        starts = [int(v) for v in imp.const(ins[1]).reshape(-1)]
        ends = [int(v) for v in imp.const(ins[2]).reshape(-1)]
        axes = [int(v) for v in imp.const(ins[3]).reshape(-1)] if len(ins) > 3 and ins[3] else list(range(len(starts)))
        steps = [int(v) for v in imp.const(ins[4]).reshape(-1)] if len(ins) > 4 and ins[4] else [1] * len(starts)
    else:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    sl = [slice(None)] * rank
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = ax + rank if ax < 0 else ax
        if ax == 0:
            raise imp.unsupported("slicing the batch axis")
        big = np.iinfo(np.int64).max // 2
        sl[ax] = slice(None if abs(st) >= big else st, None if abs(en) >= big else en, sp)
    index = tuple(sl)

    def f(v: np.ndarray) -> np.ndarray:
        return v[index]

    return _push(imp, x, f, f, sparse=lambda: moves(f, x.shape))


def _op_Identity(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> Any:
    """Identity, and Dropout in inference mode (its mask output is never produced; using it
    raises later)."""
    return imp.value(ins[0])


def _op_Shape(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> None:
    """The shape (batch 1) as a constant; recorded here, so it returns None."""
    v = imp.value(ins[0])
    shape = np.array((1,) + v.shape if isinstance(v, _Sym) else v.shape, dtype=np.int64)
    start = a.get("start", 0)
    end = a.get("end", None)
    imp.consts[outs[0]] = shape[start:end]
    return None


HANDLERS: dict[str, Callable[..., Any]] = {
    "Flatten": _op_Flatten,
    "Reshape": _op_Reshape,
    "Squeeze": _op_Squeeze,
    "Unsqueeze": _op_Unsqueeze,
    "Transpose": _op_Transpose,
    "Concat": _op_Concat,
    "Pad": _op_Pad,
    "Slice": _op_Slice,
    "Identity": _op_Identity,
    "Dropout": _op_Identity,
    "Shape": _op_Shape,
}
