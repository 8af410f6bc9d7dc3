"""The engine's own plugin: the NumPy reference kernels and the three bound methods of L0-TRE.

It is registered by every plugin host (it cannot be blocked): the engine needs a reference. The
methods are registered and selected by name exactly as a third party's would be:

- ``discrete`` (lower): L0-TRE's exhaustive enumeration of every t-subset and every assignment of V;
- ``sound`` (lower): bound propagation over the ONNX graph (``l0tre_core/certifier.py``);
- ``sensitivity`` (upper): L0-TRE's cumulative union of the most sensitive subsets, tightened.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from l0tre_core import __version__, hookimpl
from l0tre_core.witness import Witness
from l0tre_core.contracts import Certificate
from l0tre_core.tensors import NumpyKernels

__all__ = ["__version__"]


class DiscreteEnumeration:
    name = "discrete"
    kind = "lower"
    guarantee = "discrete"
    description = "L0-TRE's exhaustive enumeration of every t-subset and every assignment of V"

    def unsupported(self, classifier: Any) -> str | None:
        return None

    def prepare(self, classifier: Any, x: np.ndarray, threat: Any, seed: int) -> "Enumeration":
        return Enumeration()


class Enumeration:
    """The level-t sweep over V decides the level (its ranking stays in the context)."""

    def refusal(self) -> str | None:
        return None

    def certify(self, ctx: Any, t: int, deadline: float | None) -> Certificate:
        step = ctx.level(t, deadline)
        if step.flip is not None:
            return Certificate("refuted", step.flip)
        return Certificate("proven" if step.proven_over_v else "timeout")


class BoundPropagation:
    name = "sound"
    kind = "lower"
    guarantee = "sound"
    description = "linear bound propagation over the ONNX graph with top-t concretisation, float32-aware, split where cheap"

    def unsupported(self, classifier: Any) -> str | None:
        if classifier.onnx_model is None:
            return "the backend gives no ONNX graph"
        return None

    def prepare(self, classifier: Any, x: np.ndarray, threat: Any, seed: int) -> Any:
        from l0tre_core.certifier import SoundCertifier

        return SoundCertifier(classifier, x, threat, seed)


class SensitivityUnion:
    name = "sensitivity"
    kind = "upper"
    description = "L0-TRE's cumulative union of the most sensitive subsets, then tightening"

    def improve(self, ctx: Any, state: Any, t: int, deadline: float | None, rng: np.random.Generator) -> Witness | None:
        fresh = t not in ctx.levels
        if fresh and t != 1 and state.upper is not None:
            # the level's step is the enumeration's; take it here only at t = 1 (other searches
            # draw on its ranking) or while there is no witness at all
            return None
        step = ctx.level(t, deadline)
        if fresh and step.flip is not None:
            return ctx.tighten(step.flip) if step.flip.size > 1 else step.flip
        return None if state.settled else step.union()


class TowardOtherInputs:
    name = "toward-data"
    kind = "upper"
    description = "last resort: move pixels towards inputs of the data the model classifies otherwise, fewest first"

    def improve(self, ctx: Any, state: Any, t: int, deadline: float | None, rng: np.random.Generator) -> Witness | None:
        if state.upper is not None or t != 1:
            return None  # only for an input no other search has found a witness for
        return ctx.toward_donors(deadline)


@hookimpl
def l0tre_register_array_kernels(register: Callable[[Any], None]) -> None:
    register(NumpyKernels())


@hookimpl
def l0tre_register_bound_methods(register: Callable[[Any], None]) -> None:
    register(DiscreteEnumeration())
    register(BoundPropagation())
    register(SensitivityUnion())
    register(TowardOtherInputs())
