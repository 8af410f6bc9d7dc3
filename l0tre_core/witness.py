"""Bounds and witnesses of one input: what is proven, what is witnessed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def score(outputs: np.ndarray, ref: int, kind: str = "margin", probs: bool = False) -> np.ndarray:
    """Per-row score of the reference class: the margin ref - best other (default) or the ref score.

    Probabilities are compared as logs: the order is the same, and saturated probabilities would
    make sensitivities tie.
    """
    s = np.log(np.clip(outputs, 1e-30, None)) if probs else outputs
    if kind == "logit":
        return s[:, ref].astype(np.float64)
    other = np.delete(s, ref, axis=1).max(axis=1)
    return (s[:, ref] - other).astype(np.float64)


def score_and_flips(outputs: np.ndarray, ref: int, kind: str = "margin", probs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``score(outputs, ...)`` and ``flips(outputs, ref)`` at once: the search's hot path.

    Exactly the same results, computed column by column: NumPy reduces a ``[B, K]`` array along its
    short axis (K = 10) more than ten times slower than it takes elementwise maxima of K columns.
    argmax takes the first of tied maxima, so a row flips when another class beats the reference,
    or ties it from an earlier column; rows with NaN or infinite scores never flip."""
    out = np.asarray(outputs)
    n, k = out.shape
    if probs or kind == "logit" or k > 64:  # rarer paths, or many classes: the plain reductions
        return score(out, ref, kind, probs), flips(out, ref)
    ref_col = out[:, ref]
    best = np.full(n, -np.inf, out.dtype)
    tie_before = np.zeros(n, bool)
    finite = np.isfinite(ref_col)
    for j in range(k):
        if j == ref:
            continue
        col = out[:, j]
        np.maximum(best, col, out=best)  # NaN propagates, as in max()
        finite &= np.isfinite(col)
        if j < ref:
            tie_before |= col == ref_col
    flipped = ((best > ref_col) | tie_before) & finite
    return (ref_col - best).astype(np.float64), flipped


def flips(outputs: np.ndarray, ref: int) -> np.ndarray:
    """Rows whose top-1 class differs from ``ref``.

    A row with NaN or infinite scores has no top-1 class (argmax would just pick the first NaN),
    so it is never counted as a flip: it could not be shown to anyone as a changed decision.
    """
    return (np.argmax(outputs, axis=1) != ref) & np.all(np.isfinite(outputs), axis=1)


@dataclass
class Witness:
    """An adversarial example as changed units and their data-space values."""

    units: np.ndarray  # [k] int64
    values: np.ndarray  # [k, Cu] float32

    def apply(self, xu: np.ndarray) -> np.ndarray:
        out = xu.copy()
        out[self.units] = self.values
        return out

    @classmethod
    def between(cls, xu: np.ndarray, adv: np.ndarray) -> "Witness":
        """The units where ``adv`` differs from ``xu``."""
        changed = np.flatnonzero(np.any(adv != xu, axis=1))
        return cls(changed.astype(np.int64), adv[changed].astype(np.float32))

    @property
    def size(self) -> int:
        return int(len(self.units))

    def to_json(self) -> dict[str, Any]:
        return {"units": self.units.tolist(), "values": self.values.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any], channels: int) -> "Witness":
        return cls(
            np.asarray(data["units"], np.int64),
            np.asarray(data["values"], np.float32).reshape(-1, channels),
        )


@dataclass
class SampleState:
    """Everything known about one input so far. Bounds only ever improve."""

    index: int  # position in the data file
    label: int | None
    reference: int
    lower_sound: int = 1
    lower_discrete: int = 1
    upper: int | None = None
    witness: Witness | None = None
    level: int = 0  # highest t whose step finished
    evaluations: int = 0
    seconds: float = 0.0
    finished: bool = False
    float32_band: int | None = None  # level whose sound certificate stopped inside the float32 band
    contradiction: bool = False  # a sound lower bound exceeded a verified witness (an internal error)

    @property
    def lower(self) -> int:
        """The reported lower bound: a discrete bound above an interior-valued witness bounds
        only the changes over V, so it is capped at the witness."""
        discrete = self.lower_discrete if self.upper is None else min(self.lower_discrete, self.upper)
        return max(self.lower_sound, discrete)

    @property
    def guarantee(self) -> str:
        discrete = self.lower_discrete if self.upper is None else min(self.lower_discrete, self.upper)
        if self.lower_sound >= discrete:
            return "sound" if self.lower_sound > 1 or self.upper == 0 else "none"
        return "discrete"

    @property
    def exact(self) -> bool:
        """d* is known: a sound lower bound meets the witness."""
        return self.upper is not None and self.lower_sound >= self.upper

    @property
    def exact_over_v(self) -> bool:
        """The discrete lower bound meets the witness: no change of fewer pixels to values in V
        flips the input, and the witness does (d* itself may be smaller through other values)."""
        return self.upper is not None and not self.exact and self.lower_discrete == self.upper

    @property
    def settled(self) -> bool:
        """Nothing more to search for at this input: exact, or exact over V."""
        return self.exact or self.exact_over_v

    def raise_lower(self, value: int, guarantee: str) -> None:
        if guarantee == "sound":
            self.lower_sound = max(self.lower_sound, value)
            self._check_sound()
        else:
            self.lower_discrete = max(self.lower_discrete, value)

    def offer(self, witness: Witness) -> bool:
        """Keep ``witness`` if it is smaller than the current one (caller has verified it)."""
        if self.upper is None or witness.size < self.upper:
            self.upper = witness.size
            self.witness = witness
            self._check_sound()
            return True
        return False

    def _check_sound(self) -> None:
        # a verified witness below a sound lower bound: the certificate was wrong. Keep the
        # witness, never report a lower bound above it, and flag the input (exit code 5)
        if self.upper is not None and self.lower_sound > self.upper:
            self.lower_sound = self.upper
            self.contradiction = True

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "reference": self.reference,
            "lower": self.lower,
            "upper": self.upper,
            "guarantee": self.guarantee,
            "lower_sound": self.lower_sound,
            "lower_discrete": self.lower_discrete,
            "level": self.level,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 4),
            "finished": self.finished,
            "exact": self.exact,
            "exact_over_v": self.exact_over_v,
            "float32_band": self.float32_band,
            "contradiction": self.contradiction,
            "witness": self.witness.to_json() if self.witness is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], channels: int) -> "SampleState":
        w = data.get("witness")
        return cls(
            index=int(data["index"]),
            label=data["label"],
            reference=int(data["reference"]),
            lower_sound=int(data["lower_sound"]),
            lower_discrete=int(data["lower_discrete"]),
            upper=data["upper"],
            witness=Witness.from_json(w, channels) if w else None,
            level=int(data["level"]),
            evaluations=int(data["evaluations"]),
            seconds=float(data["seconds"]),
            finished=bool(data["finished"]),
            float32_band=None if data.get("float32_band") is None else int(data["float32_band"]),
            contradiction=bool(data.get("contradiction", False)),
        )
