"""The upper bound's last resort: where every search over V fails (only interior values flip the
label), moving pixels towards an input of the data that the model classifies otherwise still finds
a verified witness, in ``robustness`` and in ``attack`` (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from helpers import invoke, make_model_with, write_npz


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
