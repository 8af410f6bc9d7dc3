"""The engine's own plugin: the NumPy reference kernels and the two lower-bound methods.

It is registered by every plugin host (it cannot be blocked): the engine needs a reference.
"""

from __future__ import annotations

from typing import Any, Callable

from l0tre_core import __version__, hookimpl
from l0tre_core.tensors import NumpyKernels

__all__ = ["__version__"]


class DiscreteEnumeration:
    name = "discrete"
    kind = "lower"
    guarantee = "discrete"
    description = "L0-TRE's exhaustive enumeration of every t-subset and every assignment of V"


class BoundPropagation:
    name = "sound"
    kind = "lower"
    guarantee = "sound"
    description = "linear bound propagation over the ONNX graph with top-t concretisation, split where cheap"

    def unsupported(self, classifier: Any) -> str | None:
        if classifier.onnx_model is None:
            return "the backend gives no ONNX graph"
        return None

    def prepare(self, classifier: Any) -> Any:
        from l0tre_core.sound import SoundCertifier

        return SoundCertifier(classifier)


class SensitivityUnion:
    name = "sensitivity"
    kind = "upper"
    description = "L0-TRE's cumulative union of the most sensitive subsets, then tightening"


@hookimpl
def l0tre_register_array_kernels(register: Callable[[Any], None]) -> None:
    register(NumpyKernels())


@hookimpl
def l0tre_register_bound_methods(register: Callable[[Any], None]) -> None:
    register(DiscreteEnumeration())
    register(BoundPropagation())
    register(SensitivityUnion())
