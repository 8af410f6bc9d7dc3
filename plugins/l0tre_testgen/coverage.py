"""Neuron coverage (as in DeepXplore / DeepConcolic): the fraction of ReLU neurons that at least one
input of a set activates (> 0).

The engine only exposes class scores, so the plugin loads the ONNX graph again with every Relu
output added as a graph output and runs it on its own onnxruntime CPU session. A neuron is one
scalar of one Relu output of one sample (a conv channel at one position counts once per position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BATCH = 256


@dataclass
class CoverageProbe:
    """Which ReLU neurons a batch of model-layout inputs activates."""

    session: Any
    input_name: str
    relu_outputs: list[str]
    fixed_batch: bool  # the graph declares batch 1: run one sample at a time
    relu_inputs: tuple[str, ...] = ()  # the pre-activations (what coverage-guided generation steers)

    @classmethod
    def from_onnx(cls, model: Any, input_name: str, threads: int = 0) -> "CoverageProbe | None":
        """A probe for ``model`` (an onnx.ModelProto), or None when it has no Relu nodes;
        ``threads``: the session's intra-op threads (0: onnxruntime's default, every core)."""
        import onnx
        import onnxruntime as ort

        relus = [node for node in model.graph.node if node.op_type == "Relu" and node.domain in ("", "ai.onnx")]
        names = [node.output[0] for node in relus]
        if not names:
            return None
        inputs = tuple(node.input[0] for node in relus)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        existing = {o.name for o in probe.graph.output}
        graph_inputs = {i.name for i in probe.graph.input}
        for name in dict.fromkeys([*names, *inputs]):
            if name in existing or name in graph_inputs:
                continue
            existing.add(name)
            # element type only: onnxruntime fills in the shape
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # an executor's worker shares the machine's cores
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        first = next(i for i in session.get_inputs() if i.name == input_name)
        return cls(session, input_name, names, isinstance(first.shape[0], int), inputs)

    def activated(self, batch: np.ndarray) -> np.ndarray:
        """Flat boolean mask over all ReLU neurons: activated (> 0) by at least one row of ``batch``."""
        step = 1 if self.fixed_batch else BATCH
        mask: np.ndarray | None = None
        for i in range(0, len(batch), step):
            acts = self.session.run(self.relu_outputs, {self.input_name: np.ascontiguousarray(batch[i : i + step], np.float32)})
            hit = np.concatenate([(a > 0).reshape(len(a), -1).any(axis=0) for a in acts])
            mask = hit if mask is None else mask | hit
        if mask is None:  # no inputs: nothing covered, but the neurons still need counting
            raise ValueError("coverage needs at least one input")
        return mask


    def pre_activations(self, batch: np.ndarray) -> np.ndarray:
        """Every ReLU neuron's input (its pre-activation) for each row of ``batch``: ``[B, N]``
        float32, neurons in graph order (a conv channel at one position is one neuron). The neuron
        is active exactly when this is > 0, so NC at threshold 0 agrees with ``activated``."""
        step = 1 if self.fixed_batch else BATCH
        rows = []
        for i in range(0, len(batch), step):
            acts = self.session.run(list(self.relu_inputs), {self.input_name: np.ascontiguousarray(batch[i : i + step], np.float32)})
            rows.append(np.concatenate([a.reshape(len(a), -1) for a in acts], axis=1))
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def layer_sizes(self, sample: np.ndarray) -> list[tuple[str, int]]:
        """(tensor name, neurons) of every ReLU layer, for one model-layout sample ``[1, ...]``."""
        acts = self.session.run(list(self.relu_inputs), {self.input_name: np.ascontiguousarray(sample, np.float32)})
        return [(name, int(a[0].size)) for name, a in zip(self.relu_inputs, acts)]


def coverage_report(clf: Any, clean: np.ndarray, generated: np.ndarray) -> dict[str, Any]:
    """Coverage of the clean inputs, of the generated ones and of both (canonical data-space
    batches ``[N, P, C]``), or why it could not be measured."""
    model = getattr(clf, "onnx_model", None)
    if model is None:
        return {"available": False, "reason": "the backend does not expose an ONNX graph"}
    try:
        probe = CoverageProbe.from_onnx(model, clf.runtime.input_name)
    except Exception as exc:  # a graph onnxruntime cannot run with extra outputs: report, don't fail
        return {"available": False, "reason": f"cannot add the Relu outputs to the graph: {type(exc).__name__}: {exc}"}
    if probe is None:
        return {"available": False, "reason": "the model has no Relu nodes"}
    clean_mask = probe.activated(np.asarray(clf.model_input(clean)))
    gen_mask = probe.activated(np.asarray(clf.model_input(generated))) if len(generated) else np.zeros_like(clean_mask)
    n = len(clean_mask)
    return {
        "available": True,
        "neurons": n,
        "relu_layers": len(probe.relu_outputs),
        "clean": float(clean_mask.sum() / n),
        "generated": float(gen_mask.sum() / n),
        "combined": float((clean_mask | gen_mask).sum() / n),
    }
