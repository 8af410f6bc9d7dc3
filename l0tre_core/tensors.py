"""Perturbation tensors: every (t-subset, assignment) pair, enumerated by rank, written in bulk.

Subsets are never materialised as one giant index array: a chunk of global ranks is unranked on
the fly (combinatorial number system), so memory stays bounded whatever C(n, t) is. Batches are
written directly in the model's input space and layout, so nothing is copied between building a
batch and running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb
from typing import Any

import numpy as np


@lru_cache(maxsize=16)
def binomial_table(n: int, t: int) -> np.ndarray:
    """``table[c, k] = C(c, k)`` for c <= n, k <= t, as int64 (exact while C(n, t) < 2**63)."""
    table = np.array([[comb(c, k) for k in range(t + 1)] for c in range(n + 1)], np.int64)
    table.setflags(write=False)
    return table


def unrank_subsets(ranks: np.ndarray, n: int, t: int, table: np.ndarray | None = None) -> np.ndarray:
    """The t-subsets of ``range(n)`` with the given colex ranks, as ``[B, t]`` ascending indices."""
    table = binomial_table(n, t) if table is None else table
    r = np.asarray(ranks, np.int64).copy()
    out = np.empty((len(r), t), np.int64)
    for k in range(t, 0, -1):
        # the largest c with C(c, k) <= r: C(., k) is non-decreasing in c
        c = np.searchsorted(table[:, k], r, side="right") - 1
        out[:, k - 1] = c
        r -= table[c, k]
    return out


def assignment_digits(codes: np.ndarray, n_values: int, t: int) -> np.ndarray:
    """Assignment codes to ``[B, t]`` value indices (base ``n_values``, first position slowest)."""
    codes = np.asarray(codes, np.int64)
    out = np.empty((len(codes), t), np.int64)
    for k in range(t - 1, -1, -1):
        out[:, k] = codes % n_values
        codes = codes // n_values
    return out


@dataclass(frozen=True)
class Encoder:
    """Where each unit's scalars sit in the flattened model input, and data -> model values.

    ``positions[u, c]`` is the flat model-input position of channel c of unit u; a data-space
    value v there becomes ``(v - mean[u, c]) / std[u, c]`` in model space, computed in float32
    exactly as ``Classifier.model_input`` computes it (one normalisation, one rounding).
    """

    positions: np.ndarray  # [U, Cu] int64
    mean: np.ndarray  # [U, Cu] float32
    std: np.ndarray  # [U, Cu] float32

    @property
    def scale(self) -> np.ndarray:
        """``1 / std`` in float64: the exact affine map, for bound propagation."""
        return 1.0 / self.std.astype(np.float64)

    @property
    def shift(self) -> np.ndarray:
        return -self.mean.astype(np.float64) / self.std.astype(np.float64)

    @property
    def n_units(self) -> int:
        return self.positions.shape[0]

    @property
    def channels(self) -> int:
        return self.positions.shape[1]

    def encode(self, units: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions and model-space values ``[B, t*Cu]`` for ``units [B, t]`` set to
        data-space ``values [B, t, Cu]``."""
        b = units.shape[0]
        pos = self.positions[units].reshape(b, -1)
        if self.identity:  # no normalisation: data values are model values (the common case)
            return pos, np.asarray(values, np.float32).reshape(b, -1)
        val = ((np.asarray(values, np.float32) - self.mean[units]) / self.std[units]).reshape(b, -1)
        return pos, val

    @property
    def identity(self) -> bool:
        """Whether model values equal data values (mean 0, std 1 everywhere)."""
        cached = self.__dict__.get("_identity")
        if cached is None:
            cached = bool(np.all(self.mean == 0) and np.all(self.std == 1))
            object.__setattr__(self, "_identity", cached)
        return cached


def make_encoder(geometry: Any, mean: np.ndarray, std: np.ndarray, unit: str) -> Encoder:
    """The encoder of a model geometry with per-channel normalisation ``(v - mean) / std``, by unit."""
    p, c = geometry.n_pixels, geometry.n_channels
    canon_of_model = geometry.to_model(np.arange(p * c).reshape(1, p, c)).reshape(-1)
    model_of_canon = np.empty(p * c, np.int64)
    model_of_canon[canon_of_model] = np.arange(p * c)
    positions = model_of_canon.reshape(p, c)
    sc = np.broadcast_to(np.asarray(mean, np.float32), (p, c))
    sh = np.broadcast_to(np.asarray(std, np.float32), (p, c))
    if unit == "feature":
        enc = Encoder(positions.reshape(-1, 1), sc.reshape(-1, 1).copy(), sh.reshape(-1, 1).copy())
    else:
        enc = Encoder(positions, sc.copy(), sh.copy())
    for a in (enc.positions, enc.mean, enc.std):
        a.setflags(write=False)  # shared by every input's search: the classifier caches it
    return enc


class NumpyKernels:
    """The reference kernels: plain NumPy on the host. Every other kernel is tested against these."""

    name = "numpy"
    description = "NumPy on the CPU (the reference)"

    def usable(self) -> bool:
        return True

    def asarray(self, x: np.ndarray) -> Any:
        return np.asarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    device_outputs = False  # model outputs come back to the host; see ``reduce``

    def reduce(self, outputs: Any, ref: int, kind: str, probs: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-row score (``witness.score``) and flip flags (``witness.flips``) of model outputs
        on this kernel's device, as host arrays: a device kernel reduces ``[B, K]`` to ``[B]`` there
        and copies only that back."""
        from l0tre_core.witness import score_and_flips

        return score_and_flips(np.asarray(outputs), ref, kind, probs)

    def perturb(self, base: Any, positions: np.ndarray, values: np.ndarray, out: Any = None, dirty: Any = None) -> Any:
        """``out[b] = base`` then ``out[b, positions[b, j]] = values[b, j]``.

        ``base`` is a flat model-space input ``[D]``; ``positions`` and ``values`` are ``[B, M]``
        (M = changed units x channels). Returns ``[B, D]`` float32. When ``out`` is the buffer of
        the previous call and ``dirty`` the positions that call wrote, only those are restored
        instead of copying ``base`` into every row: the copy would cost more than the model.
        """
        b = positions.shape[0]
        if out is None or out.shape[0] < b or dirty is None:
            out = np.empty((b, base.shape[0]), np.float32) if out is None or out.shape[0] < b else out
            out[...] = base
        else:
            _scatter_rows(out, dirty, base[dirty])
        out = out[:b]
        _scatter_rows(out, positions, values)
        return out


def _scatter_rows(out: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    """``out[r, positions[r, j]] = values[r, j]`` through flat indices (a C-contiguous ``out``):
    one fancy assignment, several times cheaper than ``put_along_axis`` on the search's batches."""
    if not out.flags.c_contiguous:  # reshape would copy: write through the 2-D view instead
        np.put_along_axis(out[: positions.shape[0]], positions, values, axis=1)
        return
    flat = out.reshape(-1)
    flat[positions + _row_offsets(positions.shape[0], out.shape[1])] = values


@lru_cache(maxsize=64)
def _row_offsets(rows: int, width: int) -> np.ndarray:
    """``[rows, 1]`` flat offsets of each row's start (cached: made fresh on every call, they cost
    several times the scatter itself)."""
    off = (np.arange(rows, dtype=np.int64) * width)[:, None]
    off.setflags(write=False)
    return off
