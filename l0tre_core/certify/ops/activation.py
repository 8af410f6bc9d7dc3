"""Activation operators: the nonlinear nodes, their evaluation, interval bounds and relaxations.

Operators: Relu, LeakyRelu, Sigmoid, Tanh (elementwise nodes ``relu``, ``leaky``, ``sigmoid``,
``tanh``), Clip (as ``lo + relu(x - lo) - relu(x - hi)``), MaxPool (node ``maxpool`` with a window
index table), Softmax/LogSoftmax (dropped, and only as the graph output: ``_Final``).

What a reviewer must check for soundness:
- import: the parent of a nonlinear node is a linear node (never the input itself); MaxPool's
  window table matches onnxruntime (padding ``-1`` never first, ceil_mode) and its Indices output
  is refused; a Softmax anywhere but on the output, or over part of a sample, is refused;
- ``eval_nonlinear``/``pool_values``: the forward evaluation of each kind;
- ``nonlinear_interval``: ``[lo, hi]`` contains ``f(z)`` for every ``z`` in ``[l, u]``;
- ``relax``: ``sl z + bl <= f(z) <= su z + bu`` on ``[l, u]`` (ReLU/LeakyReLU triangle, tangent and
  chord lines for the S-shaped functions); ``pool_relax``: the lower bound picks the window input
  with the largest lower bound ``L*``, the upper bound is ``T + s_j (x_j - l_j)`` at the level
  ``T = max(L*, second-largest u)`` for the input ``j`` with the largest ``u`` (the chord of
  ``relu(x_j - T)``; derivation in its docstring), never above the window maximum of the upper
  bounds;
- the float32 facts: onnxruntime's Sigmoid and Tanh are approximations, covered by the measured
  ``float32.SIGMOID_ABS``/``TANH_ABS`` (``_allowance``) in the interval and the relaxation (the
  relaxation adds ``_SMOOTH_SLACK`` for its own float64 arithmetic); ReLU, LeakyReLU and MaxPool
  are taken as exact on float32 values (``certify/float32.py``); a dropped Softmax costs
  ``Problem.final_slack`` off every margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from l0tre_core.certify import _ops, float32
from l0tre_core.certify.arrays import backend_of
from l0tre_core.certify.network import Node
from l0tre_core.certify.ops.affine import _add_const, _add_syms, _Sym

if TYPE_CHECKING:
    from l0tre_core.certify.importer import _Importer

_SMOOTH_SLACK = 1e-12


class _Final:
    """The output of a Softmax: may only be the graph output."""

    def __init__(self, sym: _Sym, op: str, name: str) -> None:
        self.sym, self.op, self.name = sym, op, name


def _needs_linear(x: _Sym) -> bool:
    # the input node always feeds a linear node
    return len(x.terms) == 1 and 0 in x.terms


def _name_tensor(imp: _Importer, j: int, tensor: str) -> None:
    if imp.nodes[j].tensor is None:
        imp.nodes[j].tensor = tensor


def _nonlinear(imp: _Importer, out: str, x: _Sym, kind: str, alpha: float = 0.0, source: str | None = None) -> _Sym:
    parent = imp.materialize(x, force_new=_needs_linear(x))
    if source is not None:
        _name_tensor(imp, parent, source)
    imp.nodes.append(Node(kind, [parent], x.size, name=imp.cur_name, shape=x.shape, alpha=alpha,
                          tensor=out if source is not None else None))
    return _Sym({len(imp.nodes) - 1: None}, np.zeros(x.shape), x.shape)


# ----------------------------------------------------------------------------------------------
# import handlers


def _op_elementwise(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    """Relu, LeakyRelu, Sigmoid, Tanh: a nonlinear node on a linear parent."""
    x = imp.sym(ins[0])
    kind = {"Relu": "relu", "LeakyRelu": "leaky", "Sigmoid": "sigmoid", "Tanh": "tanh"}[imp.cur_op]
    return _nonlinear(imp, outs[0], x, kind, alpha=float(a.get("alpha", 0.01)), source=ins[0])


def _op_MaxPool(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    if len(outs) > 1 and outs[1]:
        raise imp.unsupported("the Indices output is not supported")
    x = imp.sym(ins[0])
    if len(x.shape) < 2:
        raise imp.unsupported("input of rank < 3")
    n_sp = len(x.shape) - 1
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * n_sp))
    dil = list(a.get("dilations", [1] * n_sp))
    pads = _ops.resolve_pads(x.shape[1:], kernel, strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))
    try:
        idx, out_shape = _ops.maxpool_index(x.shape[0], x.shape[1:], kernel, strides, pads, dil, bool(a.get("ceil_mode", 0)))
    except ValueError as exc:
        raise imp.unsupported(str(exc)) from exc
    parent = imp.materialize(x, force_new=_needs_linear(x))
    _name_tensor(imp, parent, ins[0])
    imp.nodes.append(Node("maxpool", [parent], idx.shape[0], name=imp.cur_name, shape=out_shape, pool_idx=idx,
                          tensor=outs[0]))
    return _Sym({len(imp.nodes) - 1: None}, np.zeros(out_shape), out_shape)


def _op_Softmax(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Final:
    """Softmax and LogSoftmax over a whole sample: dropped, allowed only on the graph output."""
    x = imp.sym(ins[0])
    axis = a.get("axis", 1 if imp.opset < 13 else -1)
    rank = len(x.shape) + 1
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise imp.unsupported("softmax over the batch axis")
    if imp.opset < 13:
        ok = True  # coerced to 2-D from axis: all trailing dims of a sample
        ok = ok and axis == 1
    else:
        ok = x.shape[axis - 1] == x.size
    if not ok:
        raise imp.unsupported("softmax over part of a sample")
    imp.final_input = ins[0]
    return _Final(x, imp.cur_op, imp.cur_name)


def _op_Clip(imp: _Importer, ins: list[str], outs: list[str], a: dict[str, Any]) -> _Sym:
    """``min(max(x, lo), hi)`` = ``lo + relu(x - lo) - relu(x - hi)`` (ReLU6 and friends)."""
    x = imp.sym(ins[0])
    lo = a.get("min")
    hi = a.get("max")
    if len(ins) > 1 and ins[1]:
        lo = imp.const(ins[1])
    if len(ins) > 2 and ins[2]:
        hi = imp.const(ins[2])
    lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
    hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None and lo > hi:
        raise imp.unsupported("min > max")

    def relu_of(s: _Sym) -> _Sym:
        parent = imp.materialize(s, force_new=True)
        imp.nodes.append(Node("relu", [parent], s.size, name=imp.cur_name, shape=s.shape))
        return _Sym({len(imp.nodes) - 1: None}, np.zeros(s.shape), s.shape)

    if lo is None:  # hi - relu(hi - x)
        r = relu_of(_add_const(imp, x, np.array(hi), sign=-1.0))
        return _add_const(imp, r, np.array(hi), sign=-1.0)
    out = _add_const(imp, relu_of(_add_const(imp, x, np.array(-lo))), np.array(lo))
    if hi is not None:
        out = _add_syms(imp, out, relu_of(_add_const(imp, x, np.array(-hi))), -1.0)
    return out


HANDLERS: dict[str, Callable[..., Any]] = {
    "Relu": _op_elementwise,
    "LeakyRelu": _op_elementwise,
    "Sigmoid": _op_elementwise,
    "Tanh": _op_elementwise,
    "Clip": _op_Clip,
    "MaxPool": _op_MaxPool,
    "Softmax": _op_Softmax,
    "LogSoftmax": _op_Softmax,
}


# ----------------------------------------------------------------------------------------------
# forward evaluation


def pool_values(x: np.ndarray, node: Node, fill: float) -> np.ndarray:
    """``x [..., Din] -> [..., Dout, K]`` the window values (padding replaced by ``fill``)."""
    idx = node.pool_idx
    assert idx is not None
    if "pool_safe" not in node._cache:
        node._cache["pool_pad"] = idx < 0  # before the key tested (threads bound boxes at once)
        node._cache["pool_safe"] = np.where(idx < 0, 0, idx)
    dev = backend_of(x)
    vals = x[..., dev.put(node._cache["pool_safe"])]
    if node._cache["pool_pad"].any():
        vals = np.where(dev.put(node._cache["pool_pad"]), fill, vals)
    return vals


def eval_nonlinear(node: Node, z: np.ndarray) -> np.ndarray:
    if node.kind == "relu":
        return np.maximum(z, 0.0)
    if node.kind == "leaky":
        return np.where(z >= 0, z, node.alpha * z)
    if node.kind == "sigmoid":
        return _ops.sigmoid(z)
    if node.kind == "tanh":
        return np.tanh(z)
    if node.kind == "maxpool":
        return pool_values(z, node, -np.inf).max(axis=-1)
    raise AssertionError(node.kind)


# ----------------------------------------------------------------------------------------------
# interval bounds and linear relaxations


def _f(kind: str, z: np.ndarray) -> np.ndarray:
    return _ops.sigmoid(z) if kind == "sigmoid" else np.tanh(z)


def _df(kind: str, z: np.ndarray) -> np.ndarray:
    if kind == "sigmoid":
        s = _ops.sigmoid(z)
        return s * (1.0 - s)
    t = np.tanh(z)
    return 1.0 - t * t


def _allowance(kind: str) -> float:
    return float32.SIGMOID_ABS if kind == "sigmoid" else float32.TANH_ABS


def relax(nd: Node, l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear bounds ``sl z + bl <= f(z) <= su z + bu`` valid for ``z`` in ``[l, u]``."""
    kind = nd.kind
    if kind in ("relu", "leaky"):
        a = 0.0 if kind == "relu" else float(nd.alpha)
        act = l >= 0
        ina = u <= 0
        uns = ~(act | ina)
        slope_fixed = np.where(act, 1.0, a)
        sl = slope_fixed.copy()
        su = slope_fixed.copy()
        bl = np.zeros_like(l)
        bu = np.zeros_like(l)
        if uns.any():
            lu, uu = l[uns], u[uns]
            den = uu - lu
            cs = (uu - a * lu) / den
            cb = uu - cs * uu
            tang = np.where(uu > -lu, 1.0, a)
            if a <= 1.0:
                su[uns], bu[uns] = cs, cb
                sl[uns] = tang
            else:
                sl[uns], bl[uns] = cs, cb
                su[uns] = tang
        return sl, bl, su, bu
    if kind in ("sigmoid", "tanh"):
        fl, fu = _f(kind, l), _f(kind, u)
        width = u - l
        sl = np.zeros_like(l)
        su = np.zeros_like(l)
        bl = fl.copy()
        bu = fu.copy()
        wide = width > 1e-9
        convex = wide & (u <= 0)
        concave = wide & (l >= 0)
        mixed = wide & ~convex & ~concave
        m = 0.5 * (l + u)
        fm, dm = _f(kind, m), _df(kind, m)
        chord = np.where(wide, (fu - fl) / np.where(wide, width, 1.0), 0.0)
        # convex part: tangent below, chord above
        sl = np.where(convex, dm, sl)
        bl = np.where(convex, fm - dm * m, bl)
        su = np.where(convex, chord, su)
        bu = np.where(convex, fl - chord * l, bu)
        # concave part: chord below, tangent above
        sl = np.where(concave, chord, sl)
        bl = np.where(concave, fl - chord * l, bl)
        su = np.where(concave, dm, su)
        bu = np.where(concave, fm - dm * m, bu)
        # mixed: the least slope on [l, u] is at an end; lines through the ends with that slope
        ms = np.minimum(_df(kind, l), _df(kind, u))
        sl = np.where(mixed, ms, sl)
        bl = np.where(mixed, fl - ms * l, bl)
        su = np.where(mixed, ms, su)
        bu = np.where(mixed, fu - ms * u, bu)
        # onnxruntime's approximation of the function, measured over the float32 range
        slack = _SMOOTH_SLACK * (1.0 + np.abs(l) + np.abs(u)) + _allowance(kind)
        return sl, bl - slack, su, bu + slack
    raise AssertionError(kind)


def nonlinear_interval(nd: Node, l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kind = nd.kind
    if kind == "maxpool":
        return pool_values(l, nd, -np.inf).max(axis=-1), pool_values(u, nd, -np.inf).max(axis=-1)
    if kind in ("sigmoid", "tanh"):
        return _f(kind, l) - _allowance(kind), _f(kind, u) + _allowance(kind)
    if kind == "relu":
        return np.maximum(l, 0.0), np.maximum(u, 0.0)
    a = float(nd.alpha)

    def f(z: np.ndarray) -> np.ndarray:
        return np.where(z >= 0, z, a * z)

    fl, fu = f(l), f(u)
    lo, hi = np.minimum(fl, fu), np.maximum(fl, fu)
    inside = (l < 0) & (u > 0)
    lo = np.where(inside, np.minimum(lo, 0.0), lo)
    return lo, hi


# MaxPool's upper relaxation (``pool_relax``): "top" (the level T = max(L*, second-largest u));
# "sum" (T = L*, every input above it, can exceed the interval bound); "old" (before 2026-11-29:
# the row of i* where it dominates, else the constant window maximum), for side-by-side tests
_POOL_POLICY = "top"


@dataclass
class PoolRelax:
    """``x[istar] <= max_k x[idx_k] <= off + sum_k slope_k x[idx_k]`` on the window's input box.

    ``idx`` is the node's window table ``pool_idx [Dout, K]`` (padding -1 carries slope 0)."""

    istar: np.ndarray  # [B, Dout] parent index of the input with the largest lower bound
    slope: np.ndarray  # [B, Dout, K] upper slopes per window entry, >= 0
    off: np.ndarray  # [B, Dout] upper constant
    ub: np.ndarray  # [B, Dout] the window maximum of the upper bounds (the interval bound)

    def take(self, idx: np.ndarray) -> "PoolRelax":
        """The relaxation of the domains ``idx`` only."""
        return PoolRelax(self.istar[idx], self.slope[idx], self.off[idx], self.ub[idx])


def pool_relax(nd: Node, l: np.ndarray, u: np.ndarray) -> PoolRelax:
    """MaxPool's linear relaxation over the input box ``[l, u]``.

    Lower: the input ``i*`` with the largest lower bound ``L*`` (as before). Upper, for any level
    ``T >= L*``, with ``C = {i : u_i > T}`` and ``s_i = (u_i - T) / (u_i - l_i)``:
    ``max_i x_i <= T + sum_{i in C} s_i (x_i - l_i)``. Why: ``max x <= max(T, max x) =
    T + max(0, max_i (x_i - T)) <= T + sum_i relu(x_i - T)``; inputs outside ``C`` never exceed
    ``T`` (their term is 0), and for ``i`` in ``C`` (``l_i <= L* <= T < u_i``) the convex
    ``relu(x_i - T)`` lies under its chord ``s_i (x_i - l_i)`` over ``[l_i, u_i]``. ``T = L*``
    gives ``L* + sum_C s_i (x_i - l_i)``: the input ``i*`` itself when it dominates (``C`` within
    ``{i*}``, ``s = 1``), and the chord of ``max(L*, x_j)`` (the least linear upper bound) when one
    input ``j`` is free and the others fixed. With two or more inputs above ``L*`` that sum can
    exceed the window maximum ``ub`` (its maximum is ``L* + sum_C (u_i - L*)``); so ``T`` is the
    larger of ``L*`` and the second-largest ``u_i``, which leaves at most one input in ``C`` (the
    one with the largest ``u``; none on a tie) and keeps the bound under ``ub`` at every point of
    the box (``T + s_j (u_j - l_j) = u_j = ub``). ``l_i = u_i`` inputs are never in ``C`` (``u_i
    = l_i <= L*``), nor padding entries (``-inf``); ties in ``l`` do not matter (only the value
    ``L*`` enters). MaxPool is exact in float32, so no rounding term."""
    assert nd.pool_idx is not None
    return pool_relax_windows(pool_values(l, nd, -np.inf), pool_values(u, nd, -np.inf), backend_of(l).put(nd.pool_idx))


def pool_relax_windows(lw: np.ndarray, uw: np.ndarray, idx: np.ndarray) -> PoolRelax:
    """``pool_relax`` from the window values ``lw``/``uw [..., Dout, K]`` (padding ``-inf``) and
    the window table ``idx [..., Dout, K]`` (broadcast against them)."""
    k = np.argmax(lw, axis=-1)
    istar = np.take_along_axis(np.broadcast_to(idx, lw.shape), k[..., None], axis=-1)[..., 0]
    lstar = np.take_along_axis(lw, k[..., None], axis=-1)[..., 0]
    ub = uw.max(axis=-1)
    top = np.argmax(uw, axis=-1)[..., None]  # the input with the largest upper bound
    k_all = backend_of(uw).xp.arange(uw.shape[-1])
    is_top = k_all == top
    second = np.where(is_top, -np.inf, uw).max(axis=-1)
    level = np.maximum(lstar, second) if _POOL_POLICY == "top" else lstar
    if _POOL_POLICY == "old":  # the upper row of i* where it dominates, else the constant ub
        others = np.where(k_all == k[..., None], -np.inf, uw).max(axis=-1)
        level = np.where(lstar >= others, lstar, ub)
    tl = level[..., None]
    free = uw > tl  # C (padding: -inf > T is False)
    # l_i on C (l_i <= L* <= T < u_i), 0 elsewhere (padding: no -inf into the arithmetic)
    base = np.where(free, lw, 0.0)
    width = np.where(free, uw - base, 1.0)  # > 0 on C
    slope = np.where(free, (uw - tl) / width, 0.0)
    off = level - (slope * base).sum(axis=-1)
    return PoolRelax(istar, slope, off, ub)
