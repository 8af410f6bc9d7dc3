"""What plugins register: data formats, inference backends, array kernels and bound methods.

Each registered object is a small class with a unique ``name``; the plugin manager keeps one
named registry per kind and refuses a second object under a name already taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class RawData:
    """What a data format reads: samples as stored and their labels (None when unlabelled).

    ``layout`` is ``"hwc"`` when each sample is an image in height, width, channel order (or
    height, width for grey images), or ``"as-is"`` when samples should be matched against the
    model's own input shape.
    """

    x: np.ndarray
    y: np.ndarray | None
    layout: str


@runtime_checkable
class DataFormat(Protocol):
    name: str
    description: str

    def matches(self, path: Path) -> bool:
        """Whether this format claims ``path`` (by suffix, by content, or by being a folder)."""

    def load(self, path: Path, labels: Path | None) -> RawData:
        """Read the whole file; raise ``DataError`` with a one-line reason when it cannot."""


@runtime_checkable
class Runtime(Protocol):
    """A loaded model that runs batches in the model's own input space and layout."""

    input_name: str
    input_shape: tuple[Any, ...]
    output_name: str
    output_shape: tuple[Any, ...]
    providers: list[str]
    batching: str  # how batches run: "native", "rewritten" (batch made symbolic) or "loop"
    notes: list[str]  # what the backend had to do, for the user (fallbacks, rewrites)

    def run(self, batch: Any) -> np.ndarray:
        """Outputs ``[N, K]`` as float32 NumPy for a float32 batch (NumPy or device array)."""


@dataclass(frozen=True)
class BackendOptions:
    device: str = "auto"  # auto | cpu | cuda
    input_name: str | None = None
    output_name: str | None = None
    threads: int = 0


@runtime_checkable
class InferenceBackend(Protocol):
    name: str

    def load(self, path: Path, options: BackendOptions) -> Runtime:
        """Load and check the model; raise ``ModelError`` or ``EnvironmentProblem``."""


@runtime_checkable
class ArrayKernels(Protocol):
    """Builds perturbation tensors on one kind of device."""

    name: str

    def usable(self) -> bool:
        """Whether this device can be used here (a GPU present, its library importable)."""

    def perturb(self, base: Any, pixels: np.ndarray, values: np.ndarray) -> Any:
        """``out[b] = base`` with ``out[b, pixels[b, j], :] = values[b, j, :]``.

        ``base`` is one canonical sample ``[P, C]``; ``pixels`` is ``[B, t]`` int; ``values`` is
        ``[B, t, C]``. Returns ``[B, P, C]`` float32 on the kernel's device.
        """

    def asarray(self, x: np.ndarray) -> Any:
        """``x`` on the kernel's device."""


@runtime_checkable
class BoundMethod(Protocol):
    name: str
    kind: str  # "lower" or "upper"
    description: str


Register = Callable[[Any], None]
