"""The threat model: what may change (pixels or single features), to which values, against what."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from l0tre_core.errors import UsageError

UNITS = ("pixel", "feature")
AGAINST = ("prediction", "label")
SCORES = ("margin", "logit")
MAX_LEVELS = 256  # per channel
MAX_VALUES = 4096  # per unit: |V| multiplies every level's cost


@dataclass(frozen=True)
class ThreatModel:
    """At most t *units* (pixels, or single features) change, each to any value in ``[lo, hi]``.

    ``values`` names the finite set V that the discrete enumeration tries per changed unit:
    ``corners`` ({lo, hi} per channel: 2 for grey, 8 for RGB) or ``grid:K`` (K levels per channel).
    """

    lo: float = 0.0
    hi: float = 1.0
    unit: str = "pixel"
    values: str = "corners"
    against: str = "prediction"
    score: str = "margin"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise UsageError(f"`unit` must be pixel or feature, got {self.unit!r}", field="unit")
        if self.against not in AGAINST:
            raise UsageError(f"`against` must be prediction or label, got {self.against!r}", field="against")
        if self.score not in SCORES:
            raise UsageError(f"`score` must be margin or logit, got {self.score!r}", field="score")
        self.levels()

    def levels(self) -> np.ndarray:
        """The values one channel may take under V, in data space."""
        if self.values == "corners":
            return np.array([self.lo, self.hi], np.float32)
        if self.values.startswith("grid:"):
            try:
                k = int(self.values[5:])
            except ValueError:
                k = 0
            if not 2 <= k <= MAX_LEVELS:
                raise UsageError(f"`values` grid:K needs an integer K from 2 to {MAX_LEVELS}, got {self.values!r}", field="values")
            return np.linspace(self.lo, self.hi, k, dtype=np.float32)
        raise UsageError(f"`values` must be corners or grid:K, got {self.values!r}", field="values")

    def value_set(self, channels: int) -> np.ndarray:
        """V as ``[|V|, channels]``: every combination of levels over the channels of one unit."""
        levels = self.levels()
        if len(levels) ** channels > MAX_VALUES:
            raise UsageError(
                f"`values` {self.values} gives {len(levels)}^{channels} values per pixel, more than {MAX_VALUES}; use fewer levels",
                field="values",
            )
        return np.array(list(itertools.product(levels, repeat=channels)), np.float32).reshape(-1, channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "range": [self.lo, self.hi],
            "values": self.values,
            "against": self.against,
            "score": self.score,
        }
