"""Sound L0 certification by linear bound propagation over ONNX classifiers (NumPy; boxes on CuPy
on a GPU, ``certify/arrays.py``).

The engine calls exactly this API:

- ``Network.from_onnx(model, input_name, output_name, sample_shape)``: the graph, prepared once;
- ``InputSet``: the L0 set in model space (clean input, valid range per scalar, pixel of each scalar);
- ``certify(net, inputs, ref, t, time_limit=..., split=True) -> Verdict``: "proven" (no input with
  at most ``t`` changed pixels leaves class ``ref``), "refuted" (with a witness the network
  misclassifies) or "unknown";
- ``margin_lower_bounds(net, inputs, ref, t)``: the one-pass lower bounds of ``z_ref - z_k``;
- ``proof_margins(net, inputs, ref, t)``: the same less the float32 band (proven iff all > 0).

``proven`` is about the float32 network onnxruntime runs (``certify/float32.py``).

Mathematics: ``shared/research/l0-bound-propagation.md``. Soundness is tested against exhaustive
and MILP oracles in ``tests/test_certify_soundness.py``.
"""

from __future__ import annotations

from l0tre_core.certify._types import InputSet, UnsupportedOperator, Verdict
from l0tre_core.certify.network import Network
from l0tre_core.certify.search import certify, margin_lower_bounds, proof_margins

__all__ = ["InputSet", "Network", "UnsupportedOperator", "Verdict", "certify", "margin_lower_bounds", "proof_margins"]
