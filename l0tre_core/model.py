"""A classifier as the engine sees it: canonical data-space inputs in, class scores out."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from l0tre_core.batching import BatchTuner
from l0tre_core.card import ModelCard, metadata_fields, read_sidecar, resolve_card
from l0tre_core.errors import CardError, ModelError, UsageError
from l0tre_core.geometry import Geometry, ambiguous_layouts, geometry_for, infer_layout
from l0tre_core.contracts import BackendOptions, Runtime

DEFAULT_BATCH = 256  # rows per call outside the search (checks, predictions)


def array_module(x: Any) -> Any:
    """NumPy, or CuPy for a CuPy array, without importing CuPy here."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import sys

        return sys.modules["cupy"]
    return np


@dataclass
class Classifier:
    """A runtime plus its card: maps canonical ``[N, P, C]`` data-space batches to outputs.

    ``evaluations`` counts every input the model has been run on through this object.
    ``batch_size`` None (the default) lets the search's calls choose their own size (``BatchTuner``);
    a number fixes it everywhere.
    """

    runtime: Runtime
    card: ModelCard
    geometry: Geometry
    n_classes: int
    path: Path | None = None
    batch_size: int | None = None
    onnx_model: Any = None  # onnx.ModelProto, for bound propagation
    evaluations: int = 0
    tuner: BatchTuner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        c = self.geometry.n_channels
        self._mean = _per_channel(self.card.mean, c, "mean", 0.0)
        self._std = _per_channel(self.card.std, c, "std", 1.0)
        self.tuner = BatchTuner(self.batch_size)
        self._encoders: dict[str, Any] = {}

    @property
    def normalised(self) -> bool:
        return self.card.mean is not None or self.card.std is not None

    def model_input(self, xc: Any) -> Any:
        """Canonical data space to the tensor the model takes (normalisation, then layout)."""
        xp = array_module(xc)
        x = xc.astype(xp.float32, copy=False)
        if self.normalised:
            x = (x - xp.asarray(self._mean)) / xp.asarray(self._std)
        return self.geometry.to_model(x)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``scale, shift`` with model value = scale * data value + shift."""
        scale = (1.0 / self._std).astype(np.float64)
        return scale, -self._mean.astype(np.float64) * scale

    def encoder(self, unit: str = "pixel") -> Any:
        """Where units sit in the flat model input, for writing perturbations in model space."""
        from l0tre_core.tensors import make_encoder

        if unit not in self._encoders:  # made once: every input's search context asks for it
            self._encoders[unit] = make_encoder(self.geometry, self._mean, self._std, unit)
        return self._encoders[unit]

    def flat_input(self, xc: Any) -> Any:
        """Canonical data-space samples ``[N, P, C]`` as flat model inputs ``[N, D]``."""
        return self.model_input(xc).reshape(xc.shape[0], -1)

    def call_size(self, rows: int) -> int:
        """Rows per model call for a group of ``rows`` perturbed inputs (tuned unless fixed)."""
        return self.tuner.size(rows)

    def run_flat(self, batch: Any) -> np.ndarray:
        """Outputs for flat model-space inputs ``[N, D]`` (the search's hot path), in calls of
        ``call_size`` rows, each timed for the tuner."""
        n = batch.shape[0]
        parts = []
        start = 0
        while start < n:
            size = self.call_size(n - start)
            chunk = batch[start : start + size]
            began = time.perf_counter()
            parts.append(np.asarray(self.runtime.run(chunk.reshape((len(chunk), *self.geometry.sample_shape))), np.float32))
            self.tuner.record(len(chunk), time.perf_counter() - began)
            start += len(chunk)
        self.evaluations += n
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out.reshape(n, -1)

    def run_flat_bound(self, batch: Any) -> Any:
        """Outputs of one model call on flat inputs ``[N, D]``, left on the batch's device through
        the runtime's IOBinding (``run_bound``): for the search's reductions on the device. Valid
        until the next call."""
        began = time.perf_counter()
        out = self.runtime.run_bound(batch.reshape((batch.shape[0], *self.geometry.sample_shape)))  # type: ignore[attr-defined]
        self.tuner.record(batch.shape[0], time.perf_counter() - began)
        self.evaluations += batch.shape[0]
        return out

    @property
    def binds_outputs(self) -> bool:
        """Whether the runtime can leave outputs on the device (IOBinding)."""
        return callable(getattr(self.runtime, "run_bound", None))

    def outputs(self, xc: Any) -> np.ndarray:
        """Raw model outputs ``[N, K]`` (logits or probabilities, as the card says), chunked."""
        n = xc.shape[0]
        if n == 0:
            return np.zeros((0, self.n_classes), np.float32)
        parts = []
        step = self.batch_size or DEFAULT_BATCH
        for start in range(0, n, step):
            chunk = xc[start : start + step]
            parts.append(np.asarray(self.runtime.run(self.model_input(chunk)), dtype=np.float32))
        self.evaluations += n
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out.reshape(n, -1)

    def predict(self, xc: Any) -> np.ndarray:
        return np.argmax(self.outputs(xc), axis=1)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "input": {"name": self.runtime.input_name, "shape": _dims(self.runtime.input_shape)},
            "output": {"name": self.runtime.output_name, "shape": _dims(self.runtime.output_shape)},
            "classes": self.n_classes,
            "geometry": self.geometry.to_dict(),
            "card": self.card.to_dict(),
            "providers": list(self.runtime.providers),
            "batching": self.runtime.batching,
            "session_options": dict(getattr(self.runtime, "session_options", {})),
            "notes": list(self.runtime.notes),
        }


def _dims(shape: tuple[Any, ...]) -> list[Any]:
    return [d if isinstance(d, int) else str(d) for d in shape]


def _per_channel(values: tuple[float, ...] | None, channels: int, name: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, np.float32)
    if len(values) == 1:
        return np.full(channels, values[0], np.float32)
    if len(values) != channels:
        raise CardError(f"`{name}` has {len(values)} values but the model's pixels have {channels} channel{'' if channels == 1 else 's'}", field=name)
    return np.asarray(values, np.float32)


def infer_card_fields(runtime: Runtime, onnx_model: Any) -> dict[str, Any]:
    """What the graph itself suggests: layout from the input shape, output kind from the last node."""
    out: dict[str, Any] = {}
    layout = infer_layout(runtime.input_shape)
    if layout is not None:
        out["layout"] = layout
    if onnx_model is not None:
        producers = {
            node.output[0]: node.op_type for node in onnx_model.graph.node if node.output
        }
        op = producers.get(runtime.output_name)
        out["output"] = "probs" if op == "Softmax" else "logits"
    return out


def build_classifier(
    runtime: Runtime,
    *,
    path: Path | None,
    onnx_model: Any,
    metadata: Mapping[str, str],
    card_flags: Mapping[str, Any],
    batch_size: int | None = None,
) -> Classifier:
    """Resolve the card for ``runtime`` and wrap it as a ``Classifier``."""
    sidecar = read_sidecar(path) if path is not None else {}
    card = resolve_card(
        flags=card_flags,
        sidecar=sidecar,
        metadata=metadata_fields(metadata),
        inferred=infer_card_fields(runtime, onnx_model),
    )
    geometry = geometry_for(runtime.input_shape, card.layout, card.channels)
    if card.sources.get("layout") in ("inferred", "default"):
        # a guessed layout: remember what else the input shape could mean, so that data which
        # fit more than one reading are refused rather than read one way silently
        others = tuple(layout for layout in ambiguous_layouts(runtime.input_shape) if layout != card.layout)
        if others:
            geometry = replace(geometry, alternatives=others)
    out_dims = [d for d in runtime.output_shape[1:]]
    k = math.prod(d for d in out_dims if isinstance(d, int)) if out_dims else 0
    # One axis of class scores; other axes may only be 1 ([N, K] or e.g. [N, K, 1, 1]).
    score_axes = [d for d in out_dims if d != 1]
    if not out_dims or not all(isinstance(d, int) for d in out_dims) or k < 2 or len(score_axes) != 1:
        raise ModelError(
            f"the output {runtime.output_name!r} has shape {_dims(runtime.output_shape)}; "
            "l0tre needs a classifier with one score per class ([N, K], K >= 2)"
        )
    if card.classes is not None and len(card.classes) != k:
        raise CardError(f"the card names {len(card.classes)} classes but the model outputs {k} scores")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"`batch_size` must be positive, got {batch_size}", field="batch_size")
    clf = Classifier(
        runtime=runtime,
        card=card,
        geometry=geometry,
        n_classes=k,
        path=path,
        batch_size=batch_size,
        onnx_model=onnx_model,
    )
    return clf


def load_model(
    path: str | Path | None = None,
    *,
    card: Mapping[str, Any] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    backend: str = "onnxruntime",
    input_name: str | None = None,
    output_name: str | None = None,
    host: Any = None,
) -> Classifier:
    """Load a model file (the embedded demo when ``path`` is None) with its resolved card."""
    from l0tre_core.demo import demo_model_path
    from l0tre_core.host import create_host

    host = host or create_host()
    backends = host.registry("backends")
    if backend not in backends:
        known = ", ".join(sorted(backends)) or "none loaded"
        hint = "plugin autoloading is off: add -p l0tre_onnxruntime" if not backends else None
        raise UsageError(f"unknown backend {backend!r} (known: {known})", hint=hint)
    model_path = Path(path) if path is not None else demo_model_path()
    if not model_path.exists():
        raise ModelError(f"model file not found: {model_path}")
    if model_path.is_dir():
        raise ModelError(f"{model_path} is a folder, not an ONNX model file")
    options = BackendOptions(device=device, input_name=input_name, output_name=output_name)
    runtime = backends[backend].load(model_path, options)
    return build_classifier(
        runtime,
        path=model_path,
        onnx_model=getattr(runtime, "onnx_model", None),
        metadata=getattr(runtime, "metadata", {}),
        card_flags=card or {},
        batch_size=batch_size,
    )
