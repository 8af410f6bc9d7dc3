"""The problem of a certification: the network, the clean input and the pixel structure of the
input set (``Problem``), the generalised L0 domains searched over it (``Domains``) and their top-k
concretisation (``pixel_terms``, ``concretize``).

``Domains`` — the generalised L0 set: per domain a box ``[lo, hi]`` for every scalar (fixed
scalars have ``lo = hi = x0``), a set of FORCED pixels (free in their box, always counted) and a
budget ``k`` of further pixels that may change among the others. ``k = t`` with nothing forced is
the plain L0 ball. A linear function ``a . x + c`` is bounded over a domain by the top-k rule:
the forced pixels' least terms plus the ``k`` most negative terms of the others.

Float32 rounding enters every bound as a bounded perturbation: every linear node's float32 value is
``W v + b + d`` with ``|d| <= eps_j`` (``Problem.eps``, from the float32 model of
``certify/float32.py`` and the magnitudes the node's inputs reach over the L0 ball), Sigmoid and
Tanh add their measured allowance, and a dropped final Softmax costs ``Problem.final_slack`` off
every margin. ``Problem.prepare_float32(t)`` sets these from the ball of size ``t``; every box and
domain searched afterwards lies inside that ball, so the same ``eps`` holds for them (boxes
recompute theirs from their own, tighter bounds and keep the smaller: ``certify/boxes.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from l0tre_core.certify import float32
from l0tre_core.certify.arrays import NUMPY, ArrayBackend
from l0tre_core.certify.network import Network, Node, apply_mat


# ----------------------------------------------------------------------------------------------
# the problem: network + clean input + pixel structure


class OutOfTime(Exception):
    """The certification's deadline (``Problem.deadline``) passed inside a pass of bounds."""


class Problem:
    def __init__(self, net: Network, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, pixel: np.ndarray, n_pixels: int) -> None:
        self.net = net
        self.arrays: ArrayBackend = NUMPY  # where boxes are bounded (``certify/arrays.py``)
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
        # scalars per pixel where every pixel has the same number (a ``Budget`` needs it)
        self.pixel_width: int | None = self.pixel_scalars.shape[1] if self.scalar_mask.all() else None
        # float32 rounding per node (None: exact float64 arithmetic, before prepare_float32)
        self.eps: list[np.ndarray | None] | None = None
        self.final_slack = 0.0
        self.ball_size = 0  # the t of the ball the float32 terms hold over (``prepare_float32``)
        self.exact_arithmetic = False  # set while measuring what the float32 terms cost
        self.light = False  # intermediate bounds by intervals past the first layer (``intermediate_bounds``)
        self.deadline: float | None = None  # ``time.perf_counter()`` past which long passes stop

    def check_time(self) -> None:
        """Raise ``OutOfTime`` once the deadline has passed: a pass of the ball's bounds on a wide
        network takes seconds, and a certification must return soon after its time limit."""
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            raise OutOfTime()

    def rounding(self, j: int) -> np.ndarray | None:
        """``eps_j`` of linear node ``j``, or None."""
        if self.eps is None or self.exact_arithmetic:
            return None
        return self.eps[j]

    def prepare_float32(self, t: int) -> list[Any]:
        """Float32 rounding bounds from the magnitudes of the L0 ball of size ``t``; returns the
        ball's intermediate bounds (with them)."""
        from l0tre_core.certify.bounds import intermediate_bounds  # it imports this module

        self.eps = [None] * len(self.net.nodes)
        self.final_slack = 0.0
        self.ball_size = t
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


@dataclass(frozen=True)
class Budget:
    """At most ``pixels`` of a box's pixels differ from ``x0``; the box's free scalars come pixel by
    pixel, ``width`` to a pixel (``Problem.pixel_width``), and each one's range holds ``x0``.
    A box with a budget is the L0 ball of size ``pixels`` over its own pixels."""

    pixels: int
    width: int

    def least(self, terms: np.ndarray) -> np.ndarray:
        """``terms [B, F, ...]``: each free scalar's least term over its range (padding: 0). The
        least sum over the box: the ``pixels`` most negative per-pixel sums. An unchanged pixel
        adds 0, so a scalar's positive term never counts (which also keeps the bound valid for a
        range without ``x0``)."""
        terms = np.minimum(terms, 0.0)
        if self.width > 1:
            b, f = terms.shape[:2]
            terms = terms.reshape((b, f // self.width, self.width) + terms.shape[2:]).sum(axis=2)
        if self.pixels >= terms.shape[1]:
            return terms.sum(axis=1)
        return np.partition(terms, self.pixels - 1, axis=1)[:, : self.pixels].sum(axis=1)


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

