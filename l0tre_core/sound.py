"""Sound lower bounds for the engine: the bound-propagation certifier applied to one input.

The certifier works in the model's input space; the L0 set is "at most t units free in the valid
range", mapped through the card's normalisation (an increasing or decreasing affine map per
scalar, so boxes map to boxes). Refutations come back as witnesses in data space and are verified
by the driver like every other witness.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from l0tre_core.bounds import Witness



class SoundCertifier:
    def __init__(self, classifier: Any) -> None:
        from l0tre_core.certify import Network

        self.classifier = classifier
        rt = classifier.runtime
        self.net = Network.from_onnx(classifier.onnx_model, rt.input_name, rt.output_name, classifier.geometry.sample_shape)

    def input_set(self, ctx: Any) -> Any:
        from l0tre_core.certify import InputSet

        enc = ctx.encoder
        d = ctx.base.shape[0]
        lo = np.empty(d, np.float64)
        hi = np.empty(d, np.float64)
        unit = np.empty(d, np.int64)
        pos = enc.positions.reshape(-1)
        scale = enc.scale.reshape(-1).astype(np.float64)
        shift = enc.shift.reshape(-1).astype(np.float64)
        a = scale * ctx.threat.lo + shift
        b = scale * ctx.threat.hi + shift
        lo[pos], hi[pos] = np.minimum(a, b), np.maximum(a, b)
        unit[pos] = np.repeat(np.arange(enc.n_units), enc.channels)
        return InputSet(x0=ctx.base.astype(np.float64), lo=lo, hi=hi, pixel=unit, n_pixels=enc.n_units)

    def certify(self, ctx: Any, t: int, time_limit: float) -> tuple[str, Witness | None]:
        from l0tre_core.certify import certify

        verdict = certify(self.net, self.input_set(ctx), ctx.ref, t, time_limit=time_limit)
        if verdict.status != "refuted" or verdict.witness is None:
            return verdict.status, None
        enc = ctx.encoder
        model_values = np.asarray(verdict.witness, np.float64)[enc.positions]  # [U, Cu]
        data_values = (model_values - enc.shift) / enc.scale
        adv = np.clip(data_values, ctx.threat.lo, ctx.threat.hi).astype(np.float32)
        # values the certifier left unchanged must stay bit-identical to the clean input
        same = np.isclose(model_values, ctx.base.astype(np.float64)[enc.positions], rtol=0, atol=1e-7)
        adv[same] = ctx.x_units[same]
        return "refuted", Witness.between(ctx.x_units, adv)


def unsupported_reason(classifier: Any) -> str | None:
    """Why bound propagation cannot run on this model, or None when it can."""
    if classifier.onnx_model is None:
        return "the backend gives no ONNX graph"
    try:
        from l0tre_core.certify import Network, UnsupportedOperator
    except ImportError as exc:
        return f"the certifier is not available ({exc})"
    try:
        rt = classifier.runtime
        Network.from_onnx(classifier.onnx_model, rt.input_name, rt.output_name, classifier.geometry.sample_shape)
    except UnsupportedOperator as exc:
        return str(exc)
    return None
