"""Sound lower bounds for the engine: the bound-propagation certifier applied to one input.

The certifier works in the model's input space; the L0 set is "at most t units free in the valid
range", mapped through the card's normalisation (an increasing or decreasing affine map per
scalar, so boxes map to boxes; widened by the float32 rounding of that map). Refutations come
back as witnesses in data space and are verified by the driver like every other witness.

Before it certifies anything, the certifier's own float64 forward pass is compared with the
onnxruntime session that runs the model, on every input's clean point and on a few hundred points
of the perturbation set around the first input. A difference beyond the float32 error bound means
the certifier would prove a different network: certification is refused for the model, naming the
first tensor where the two part.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from l0tre_core.witness import Witness
from l0tre_core.contracts import Certificate

if TYPE_CHECKING:
    from l0tre_core.certify.arrays import ArrayBackend

CHECK_POINTS = 300  # perturbed points around the first input
CHECK_CHUNK = 64


class SoundCertifier:
    """The ``sound`` method prepared for one run (a ``Certifier``): the network built once, checked
    against onnxruntime on the run's inputs ``x [N, P, C]`` the first time it is asked."""

    def __init__(self, classifier: Any, x: np.ndarray, threat: Any, seed: int = 0) -> None:
        from l0tre_core.certify import Network, UnsupportedOperator

        self.classifier = classifier
        self.net: Any = None
        self.refused: str | None = None
        self._pending = (x, threat, seed)
        if classifier.onnx_model is None:
            self.refused = "the backend gives no ONNX graph"
            return
        rt = classifier.runtime
        try:
            self.net = Network.from_onnx(classifier.onnx_model, rt.input_name, rt.output_name, classifier.geometry.sample_shape)
        except UnsupportedOperator as exc:
            self.refused = str(exc)

    # -- the differential check ------------------------------------------------------------------
    def refusal(self) -> str | None:
        """Why this model cannot be certified (None: it can), checked once per run."""
        if self._pending is not None:
            x, threat, seed = self._pending
            self._pending = None
            if self.refused is None and len(x):
                self.refused = self._differential(x, threat, seed)
        return self.refused

    def _differential(self, x: np.ndarray, threat: Any, seed: int) -> str | None:
        rng = np.random.default_rng(seed)
        pts = [x]
        base = x[0]
        n_units, c = base.shape
        for k in range(CHECK_POINTS):
            t = 1 + k % 3
            units = rng.choice(n_units, size=min(t, n_units), replace=False)
            p = base.copy()
            if k % 2:
                p[units] = rng.uniform(threat.lo, threat.hi, size=(len(units), c))
            else:
                p[units] = np.where(rng.integers(0, 2, size=(len(units), c)) == 1, threat.hi, threat.lo)
            pts.append(p[None])
        xs = np.concatenate(pts).astype(np.float32)
        for s in range(0, len(xs), CHECK_CHUNK):
            chunk = xs[s : s + CHECK_CHUNK]
            bad = self._mismatch(chunk)
            if bad is not None:
                return self._diagnose(chunk[bad])
        return None

    def _mismatch(self, xc: np.ndarray) -> int | None:
        """The first row whose onnxruntime output differs from the certifier's beyond float32 error."""
        from l0tre_core.certify import float32

        clf = self.classifier
        flat = clf.flat_input(xc)
        ort_out = np.asarray(clf.run_flat(flat), np.float64)
        values = self.net.node_values(np.asarray(flat, np.float64))
        mags = [np.abs(v) for v in values]
        z = values[-1]
        err = float32.SAFETY * float32.output_errors(self.net, mags)
        if self.net.final == "Softmax":
            zs = z - z.max(axis=1, keepdims=True)
            p = np.exp(zs) / np.exp(zs).sum(axis=1, keepdims=True)
            spread = err.max(axis=1, keepdims=True)
            tol = p * (np.expm1(2 * spread) + 2 * float32.SOFTMAX_REL) + 4 * float32.U
            diff = np.abs(ort_out - p)
        elif self.net.final == "LogSoftmax":
            zs = z - z.max(axis=1, keepdims=True)
            ls = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
            tol = 2 * err.max(axis=1, keepdims=True) + 4 * float32.U * (np.abs(ls) + 1.0) + 2 * float32.SOFTMAX_REL
            diff = np.abs(ort_out - ls)
        else:
            tol = err + 1e-30
            diff = np.abs(ort_out - z)
        bad = np.nonzero(~(diff <= tol).all(axis=1))[0]
        return int(bad[0]) if bad.size else None

    def _diagnose(self, xc: np.ndarray) -> str:
        """Name the first tensor where onnxruntime and the certifier part, for one point."""
        from l0tre_core.certify import float32

        net = self.net
        flat = np.asarray(self.classifier.flat_input(xc[None]), np.float64)
        values = net.node_values(flat)
        errs = float32.node_errors(net, [np.abs(v) for v in values])
        named = [(j, nd) for j, nd in enumerate(net.nodes) if nd.tensor and j > 0]
        found = _intermediates(self.classifier, [nd.tensor for _, nd in named], self.classifier.model_input(xc[None]))
        for j, nd in named:
            got = found.get(nd.tensor)
            if got is None or got.size != values[j].size:
                continue
            gap = np.abs(got.reshape(-1) - values[j][0])
            allowed = float32.SAFETY * errs[j][0]
            k = int(np.argmax(gap - allowed))
            diff, tol = float(gap[k]), float(allowed[k])
            if not diff <= tol:
                op, name = _producer(self.classifier.onnx_model, nd.tensor)
                return (f"the certifier's network differs from onnxruntime's at tensor {nd.tensor!r} (operator {op}, "
                        f"node {name}): {diff:.3g} apart, float32 allows {tol:.3g}")
        return ("the certifier's network differs from onnxruntime's at the output "
                f"{self.classifier.runtime.output_name!r} beyond float32 rounding")

    # -- per input -------------------------------------------------------------------------------
    def input_set(self, ctx: Any) -> Any:
        from l0tre_core.certify import InputSet, float32

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
        if np.any(scale != 1.0) or np.any(shift != 0.0):
            lo, hi = float32.widen(lo, hi)
        unit[pos] = np.repeat(np.arange(enc.n_units), enc.channels)
        return InputSet(x0=ctx.base.astype(np.float64), lo=lo, hi=hi, pixel=unit, n_pixels=enc.n_units)

    def certify(self, ctx: Any, t: int, deadline: float | None) -> Certificate:
        """``proven``, ``refuted`` (with a witness to verify), ``unknown`` or ``band`` (unknown
        because a margin stays inside the float32 error band)."""
        from l0tre_core.certify import certify

        limit = None if deadline is None else max(0.0, deadline - time.monotonic())
        # the session's intra-op threads (0: all cores) are what this worker was given: a Ray
        # worker holding one CPU gets one, and its certificates bound one batch at a time
        options = getattr(self.classifier.runtime, "session_options", None) or {}
        threads = int(options.get("intra_op_num_threads", 0) or 0)
        verdict = certify(self.net, self.input_set(ctx), ctx.ref, t, time_limit=limit, arrays=_arrays_for(ctx.kernels),
                          threads=threads)
        if verdict.status != "refuted" or verdict.witness is None:
            status = "band" if verdict.status == "unknown" and verdict.band else verdict.status
            return Certificate(status, None, verdict.detail)
        enc = ctx.encoder
        model_values = np.asarray(verdict.witness, np.float64)[enc.positions]  # [U, Cu]
        data_values = (model_values - enc.shift) / enc.scale
        adv = np.clip(data_values, ctx.threat.lo, ctx.threat.hi).astype(np.float32)
        # values the certifier left unchanged must stay bit-identical to the clean input
        same = np.isclose(model_values, ctx.base.astype(np.float64)[enc.positions], rtol=0, atol=1e-7)
        adv[same] = ctx.x_units[same]
        return Certificate("refuted", Witness.between(ctx.x_units, adv), verdict.detail)


def _arrays_for(kernels: Any) -> "ArrayBackend | None":
    """Where the certifier bounds its boxes: on the GPU when the search's kernels are CuPy's (the
    run chose the GPU), else NumPy (None)."""
    if getattr(kernels, "name", "") != "cupy":
        return None
    from l0tre_core.certify.arrays import cupy_backend

    return cupy_backend()


def _producer(model: Any, tensor: str) -> tuple[str, str]:
    for node in model.graph.node:
        if tensor in node.output:
            return node.op_type, node.name or tensor
    return "?", tensor


def _intermediates(classifier: Any, names: list[str], x_model: Any) -> dict[str, np.ndarray]:
    """The values onnxruntime computes for the tensors ``names`` on one model input (a separate
    session with those tensors as extra outputs; the model's own session is left alone)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(classifier.onnx_model)
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    rt = classifier.runtime
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(names, {rt.input_name: np.asarray(x_model, np.float32)})
    except Exception:  # noqa: BLE001 - diagnosis only: fall back to naming the output
        return {}
    return {n: np.asarray(v, np.float64) for n, v in zip(names, outs)}
