"""Coverage criteria over the ReLU neurons' pre-activations (DeepConcolic's NC and NBC).

A criterion has *targets*; each is covered by an input whose ``objective`` for it is > 0, so
"how close is this input to covering target j" is one number, larger is closer:

- **NC** (neuron coverage): one target per neuron, covered when its pre-activation exceeds the
  threshold (0 by default: the ReLU is active). Objective: ``v - threshold``.
- **NBC** (neuron boundary coverage): two targets per neuron, its upper and its lower boundary,
  covered when the pre-activation goes above the largest or below the smallest value seen on a
  calibration set. Objectives: ``v - hi`` and ``lo - v``.

Pre-activations rather than ReLU outputs: an inactive ReLU outputs 0 whatever the input does, so
its output gives no direction to steer by, and a lower boundary of a ReLU output is always 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CRITERIA = ("nc", "nbc")


@dataclass
class Criterion:
    name: str  # nc | nbc
    neurons: int
    threshold: float = 0.0  # NC
    lo: np.ndarray | None = None  # NBC: per-neuron calibration range [N]
    hi: np.ndarray | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # where the NBC range came from

    @property
    def targets(self) -> int:
        return self.neurons if self.name == "nc" else 2 * self.neurons

    def objective(self, pre: np.ndarray) -> np.ndarray:
        """``[B, targets]``: > 0 where the row covers the target (float64, so small gaps are kept)."""
        v = np.asarray(pre, np.float64)
        if self.name == "nc":
            return v - self.threshold
        return np.concatenate([v - self.hi, self.lo - v], axis=1)  # type: ignore[operator]

    def covered(self, pre: np.ndarray) -> np.ndarray:
        """``[B, targets]`` bool, computed in float32 as the network's values are."""
        v = np.asarray(pre, np.float32)
        if self.name == "nc":
            return v > np.float32(self.threshold)
        return np.concatenate([v > self.hi, v < self.lo], axis=1)

    def describe(self) -> dict[str, Any]:
        if self.name == "nc":
            return {"name": "nc", "threshold": self.threshold, "targets": self.targets,
                    "rule": "a neuron is covered when its pre-activation exceeds the threshold"}
        return {"name": "nbc", "targets": self.targets, "calibration": self.calibration,
                "rule": "each neuron's upper (lower) boundary is covered when its pre-activation goes above (below) "
                        "every value seen on the calibration set"}

    def target_name(self, j: int, layers: list[tuple[str, int]]) -> str:
        """``layer[k]`` (NC) or ``layer[k]:upper|lower`` (NBC) for target ``j``."""
        n = int(j) % self.neurons
        for name, size in layers:
            if n < size:
                break
            n -= size
        tail = "" if self.name == "nc" else (":upper" if j < self.neurons else ":lower")
        return f"{name}[{n}]{tail}"


def nbc_criterion(pre_calibration: np.ndarray, calibration: dict[str, Any]) -> Criterion:
    """NBC with the per-neuron range of ``pre_calibration`` (``[M, N]`` pre-activations)."""
    return Criterion("nbc", pre_calibration.shape[1], lo=pre_calibration.min(axis=0).astype(np.float32),
                     hi=pre_calibration.max(axis=0).astype(np.float32), calibration=calibration)
