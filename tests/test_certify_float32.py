"""The float32 side of certificates: allowances, the differential check, the band, contradictions.

- The allowances for onnxruntime's approximated kernels (Sigmoid, Tanh, Softmax) are re-measured
  against float64 over the float32 range; a runtime whose error exceeds half of one fails here.
- The differential check refuses a model whose certifier view differs from onnxruntime, naming the
  tensor; ``auto`` falls back to the discrete bound and says so.
- A margin left inside the float32 band is ``unknown`` and counted as such.
- A sound lower bound above a verified witness is an internal error: exit code 5, witness kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from helpers import invoke, make_model_with, write_npz
from l0tre_core.contracts import Certificate
from l0tre_core.certify import InputSet, Network, certify, float32
from l0tre_core.model import load_model
from l0tre_core.certifier import SoundCertifier
from l0tre_core.threat import ThreatModel


def _session(op: str, **attrs: object) -> ort.InferenceSession:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_allowances_cover_onnxruntime_kernels_with_a_factor_of_two() -> None:
    mag = np.concatenate([np.logspace(-30, 4.5, 100_000), np.linspace(0, 30, 100_000)])
    x = np.concatenate([mag, -mag]).astype(np.float32).reshape(-1, 8)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sig = 1.0 / (1.0 + np.exp(-x64))
    for op, exact, allowed in (("Sigmoid", sig, float32.SIGMOID_ABS), ("Tanh", np.tanh(x64), float32.TANH_ABS)):
        got = _session(op).run(None, {"x": x})[0].astype(np.float64)
        assert np.abs(got - exact).max() <= allowed / 2, op
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((50_000, 8)) * rng.choice([1e-3, 1.0, 10.0, 100.0, 1000.0], (50_000, 1))).astype(np.float32)
    got = _session("Softmax", axis=-1).run(None, {"x": z})[0].astype(np.float64)
    z64 = z.astype(np.float64)
    e = np.exp(z64 - z64.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    big = p > 1e-30
    assert (np.abs(got - p)[big] / p[big]).max() <= float32.SOFTMAX_REL / 2


def _mlp(path: Path, seed: int = 0, logit_shift: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 12)).astype(np.float32)
    w2 = rng.standard_normal((12, 3)).astype(np.float32)
    b2 = (np.array([0.0, 0.0, 0.0]) + logit_shift).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "w2", "b2"], ["z"])]
    return make_model_with(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                           [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
                           {"w1": w1, "b1": np.zeros(12, np.float32), "w2": w2, "b2": b2})


def test_forward_disagreeing_with_onnxruntime_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    clf = load_model(_mlp(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).uniform(0, 1, (3, 16, 1)).astype(np.float32)
    threat = ThreatModel()
    assert SoundCertifier(clf, x, threat).refusal() is None
    wrong = SoundCertifier(clf, x, threat)
    first = next(nd for nd in wrong.net.nodes if nd.kind == "linear")
    first.bias = first.bias + 1e-3  # the certifier's network is no longer the one that runs
    reason = wrong.refusal()
    assert reason is not None and "'h'" in reason and "Gemm" in reason, reason


def test_auto_falls_back_to_discrete_when_the_check_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp(tmp_path / "m.onnx")
    data = write_npz(tmp_path / "x.npz", np.random.default_rng(2).uniform(0, 1, (2, 1, 4, 4)).astype(np.float32))
    monkeypatch.setattr(SoundCertifier, "_differential", lambda self, x, threat, seed: "the networks differ at 'h'")
    res = invoke(["robustness", model, "--data", data, "--max-t", "1", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert {s["guarantee"] for s in report["samples"]} <= {"discrete", "none"}
    assert any("the networks differ at 'h'" in n for n in report["model"]["notes"])
    res = invoke(["robustness", model, "--data", data, "--max-t", "1", "--lower", "sound"])
    assert res.exit_code == 2 and "the networks differ at 'h'" in res.stderr


def _two_logits(w: list[float]) -> Network:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])],
        [onnx.numpy_helper.from_array(np.array([w], np.float32), "w"),
         onnx.numpy_helper.from_array(np.array([1024.0, 1024.0], np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Network.from_onnx(model, "x", "z", (1,))


def test_margin_inside_the_float32_band_is_unknown_not_proven() -> None:
    # z = 1024 + (1e-6 x, -1e-6 x): float64 puts class 0 ahead by 2e-9 on the whole set, float32
    # cannot tell the two logits apart near 1024: neither proven nor refuted, and said so
    inputs = InputSet(x0=np.array([1e-3]), lo=np.array([1e-3]), hi=np.array([2e-3]), pixel=np.array([0]), n_pixels=1)
    v = certify(_two_logits([1e-6, -1e-6]), inputs, 0, 1, time_limit=5)
    assert v.status == "unknown" and v.band, v
    # a margin of 1 on the same logits is far outside the band
    assert certify(_two_logits([1.0, -1.0]), inputs, 0, 1, time_limit=5).status == "proven"


class _Liar:
    """A certifier that proves everything: the engine must catch it against its own witnesses."""

    def refusal(self) -> None:
        return None

    def certify(self, ctx: object, t: int, deadline: float | None) -> Certificate:
        return Certificate("proven")


def test_a_sound_bound_above_a_verified_witness_exits_5_and_keeps_the_witness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from l0tre_core import methods

    monkeypatch.setattr(methods.BoundPropagation, "prepare", lambda self, classifier, x, threat, seed: _Liar())
    model = _mlp(tmp_path / "m.onnx")
    data = write_npz(tmp_path / "x.npz", np.random.default_rng(3).uniform(0, 1, (4, 1, 4, 4)).astype(np.float32))
    out = tmp_path / "run"
    res = invoke(["robustness", model, "--data", data, "--max-t", "3", "--lower", "both", "--format", "json", "--out", out])
    assert res.exit_code == 5, (res.exit_code, res.stderr)
    assert "sound lower bound was above a verified witness" in res.stderr
    report = json.loads((out / "results.json").read_text())
    wrong = [s for s in report["samples"] if s["contradiction"]]
    assert wrong, report["samples"]
    for s in wrong:
        assert s["upper"] is not None and s["lower"] <= s["upper"] and s["lower_sound"] <= s["upper"]
    assert json.loads(res.stdout)["samples"] == report["samples"]
