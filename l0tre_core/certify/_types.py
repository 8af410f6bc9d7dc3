"""The public value types of the certifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputSet:
    """The L0 input set in MODEL space, over the flattened per-sample model input (D scalars).

    Every input that differs from ``x0`` in at most ``t`` pixels, each changed pixel's scalars taking
    any value in ``[lo, hi]``. All channels of a pixel change together and count once.
    """

    x0: np.ndarray  # float64 [D]
    lo: np.ndarray  # float64 [D]
    hi: np.ndarray  # float64 [D]
    pixel: np.ndarray  # int64 [D]
    n_pixels: int


class UnsupportedOperator(Exception):
    """The ONNX graph holds something bound propagation cannot handle."""

    def __init__(self, op_type: str, node_name: str, reason: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        self.reason = reason
        msg = f"operator {op_type} (node {node_name}) is not supported by bound propagation"
        if reason:
            msg += f": {reason}"
        super().__init__(msg)


@dataclass
class Verdict:
    status: str  # "proven" | "refuted" | "unknown"
    witness: np.ndarray | None  # model-space [D] input classified != ref, <= t pixels from x0
    seconds: float
    detail: str = ""
    band: bool = False  # unknown because a margin stays inside the float32 error band
