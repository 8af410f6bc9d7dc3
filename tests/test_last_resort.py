"""The upper bound's last resort: where every search over V fails (only interior values flip the
label), moving pixels towards an input of the data that the model classifies otherwise still finds
a verified witness, in ``robustness`` and in ``attack`` (issue #13)."""

from __future__ import annotations

import json

import pytest
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from helpers import invoke, make_model_with, ort_outputs, write_npz


def _interior_only(path: Path) -> Path:
    """Class 1 iff |x0 - 0.5| < 0.1: no corner value of any pixel flips class 0, 0.5 does."""
    w1 = np.zeros((16, 2), np.float32)
    w1[0] = [1.0, -1.0]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["z"]),
    ]
    return make_model_with(
        path, nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])],
        {"w1": w1, "b1": np.array([-0.5, 0.5], np.float32),
         "w2": np.array([[1.0, 0.0], [1.0, 0.0]], np.float32), "b2": np.array([0.1, 0.2], np.float32)},
    )


def _data(tmp_path: Path) -> Path:
    x = np.zeros((3, 1, 4, 4), np.float32)
    x[1, 0, 0, 0] = 0.5  # class 1: the donor
    x[2, 0, 2, 2] = 1.0  # class 0, another pixel set
    return write_npz(tmp_path / "x.npz", x)


def test_robustness_finds_a_witness_only_interior_values_give(tmp_path: Path) -> None:
    model, data = _interior_only(tmp_path / "m.onnx"), _data(tmp_path)
    res = invoke(["robustness", model, "--data", data, "--lower", "discrete", "--max-t", "1", "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    s0 = json.loads(res.stdout)["samples"][0]
    assert s0["lower_discrete"] == 2  # no corner flips it...
    assert s0["upper"] == 1 and s0["lower"] == 1  # ...but x0 -> 0.5, taken from input 1, does


def test_attack_succeeds_where_the_searches_over_v_fail(tmp_path: Path) -> None:
    model, data = _interior_only(tmp_path / "m.onnx"), _data(tmp_path)
    res = invoke(["attack", model, "--data", data, "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    samples = {s["index"]: s for s in json.loads(res.stdout)["samples"]}
    assert samples[0]["success"] and samples[0]["l0"] == 1
    assert samples[2]["success"] and samples[2]["l0"] == 1


# --- no cap hides a witness: deep MLPs and CNNs (issue #13) -----------------------------------------

MODELS = Path(__file__).resolve().parent / "data" / "models"
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def _mnist(clf, n: int, start: int = 8000):
    from l0tre_core import load_data

    return load_data(MNIST, clf.geometry, clf.card.range, n=n, start=start)


def test_every_correctly_classified_input_of_a_deep_mlp_gets_a_witness(tmp_path: Path) -> None:
    # mlp_deep: 784-256x6-10 (scripts/make_deep_mlp.py). --budget 0 and --k-max 1 leave the
    # sensitivity union and the last resort: examples of any size must be reported, verified.
    res = invoke(["attack", str(MODELS / "mlp_deep.onnx"), "--data", str(MNIST), "--start", "8000", "--n", "12",
                  "--budget", "0", "--k-max", "1", "--out", str(tmp_path), "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    samples = json.loads(res.stdout)["samples"]
    assert all(s["success"] for s in samples), [s["notes"] for s in samples if not s["success"]]
    assert max(s["l0"] for s in samples) > 1  # examples larger than --k-max are reported, not hidden
    adv = np.load(tmp_path / "adversarial.npz")
    from l0tre_core import load_model

    clf = load_model(MODELS / "mlp_deep.onnx")
    data = _mnist(clf, 12)
    for i, x_adv in zip(adv["index"], adv["x_adv"]):
        pos = int(np.flatnonzero(data.index == i)[0])
        s = next(s for s in samples if s["index"] == i)
        out = ort_outputs(MODELS / "mlp_deep.onnx", x_adv.reshape(1, 784).astype(np.float32))
        assert int(np.argmax(out[0])) != s["reference"]  # re-run in onnxruntime, by our own hand
        assert int((x_adv.reshape(784) != data.x[pos].reshape(784)).sum()) == s["l0"]  # recounted


@pytest.mark.parametrize("model", ["mlp_deep.onnx", None])  # the deep MLP and the demo CNN
def test_the_last_resort_needs_no_donor_in_the_data(model: str | None) -> None:
    # one input and no data to borrow from: synthetic donors (constant images of V, seeded noise)
    from l0tre_core import SearchContext, ThreatModel, load_model
    from l0tre_core.tensors import NumpyKernels

    clf = load_model(None if model is None else MODELS / model)
    data = _mnist(clf, 3)
    for x in data.x:
        ref = int(clf.predict(x[None])[0])
        ctx = SearchContext(clf, NumpyKernels(), ThreatModel(lo=0.0, hi=1.0), x, ref, 4096)
        assert ctx.data is None
        w = ctx.toward_donors(deadline=0.0)  # a deadline already past: the first donor still runs to the end
        assert w is not None and w.size >= 1 and ctx.verify(w)
        adv = w.apply(ctx.x_units)
        assert np.all((adv >= 0) & (adv <= 1))
        assert int(np.argmax(clf.outputs(adv.reshape(1, *x.shape))[0])) != ref


def test_attack_on_one_input_alone_finds_the_interior_witness(tmp_path: Path) -> None:
    # the interior-only model, attacked on its first input only: no other input of the data to move
    # towards, yet x0 -> about 0.5 flips it; seeded noise images supply a donor
    model, data = _interior_only(tmp_path / "m.onnx"), _data(tmp_path)
    res = invoke(["attack", model, "--data", data, "--n", "1", "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)["samples"][0]
    assert s["success"] and s["l0"] == 1 and s["found_by"] == "toward-data"
