"""Pure-NumPy classifiers for engine tests: the engine only needs the Runtime protocol."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l0tre_core.model import Classifier, build_classifier


@dataclass
class MlpRuntime:
    """A random ReLU MLP on NCHW inputs; weights scaled so a few pixels flip the label."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    input_shape: tuple[Any, ...]
    input_name: str = "x"
    output_name: str = "y"
    providers: list[str] = field(default_factory=lambda: ["numpy"])
    batching: str = "native"
    notes: list[str] = field(default_factory=list)

    @property
    def output_shape(self) -> tuple[Any, ...]:
        return ("N", self.w2.shape[1])

    def run(self, batch: Any) -> np.ndarray:
        x = np.asarray(batch, np.float64).reshape(len(batch), -1)
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        return (h @ self.w2 + self.b2).astype(np.float32)


def random_classifier(seed: int, c: int = 1, h: int = 3, w: int = 3, classes: int = 3, hidden: int = 12, scale: float = 1.5) -> Classifier:
    rng = np.random.default_rng(seed)
    d = c * h * w
    rt = MlpRuntime(
        w1=rng.normal(0, scale, (d, hidden)),
        b1=rng.normal(0, 0.5, hidden),
        w2=rng.normal(0, 1.0, (hidden, classes)),
        b2=rng.normal(0, 0.5, classes),
        input_shape=("N", c, h, w),
    )
    return build_classifier(rt, path=None, onnx_model=None, metadata={}, card_flags={"layout": "nchw"})


def oracle_distance(clf: Classifier, x: np.ndarray, ref: int, values: np.ndarray) -> int | None:
    """d* over V by brute force: the fewest pixels set to values of V that flip the label."""
    p = clf.geometry.n_pixels
    for t in range(1, p + 1):
        for subset in itertools.combinations(range(p), t):
            for assignment in itertools.product(range(len(values)), repeat=t):
                adv = x.copy()
                adv[list(subset)] = values[list(assignment)]
                batch = adv[None]
                if int(np.argmax(clf.outputs(batch)[0])) != ref:
                    return t
    return None
