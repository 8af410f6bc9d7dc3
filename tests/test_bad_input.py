"""Bad models, bad data and bad flags (the foundation's part): each is refused with one line on
stderr that starts with ``error:``, no traceback, and the documented exit code:
2 for usage (a flag's value out of its domain, a window outside the data), 3 for a bad model,
card or data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.external_data_helper import convert_model_to_external_data

from helpers import (
    DEMO_DATA,
    DEMO_MODEL,
    MODELS,
    assert_one_line_error,
    invoke,
    make_cnn,
    make_mlp,
    make_model_with,
    run_l0tre,
    write_npz,
)

USAGE, BAD = 2, 3


def refused(args: list, code: int, contains: str | list[str] = ()) -> str:
    result = invoke(args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    return assert_one_line_error(result.stderr, contains=contains)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")


def npz(tmp_path: Path, x: np.ndarray, y: np.ndarray | None = None, name: str = "d.npz") -> Path:
    return write_npz(tmp_path / name, x, y)


def images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 4, 4), dtype=np.float32)


# --- the model file ------------------------------------------------------------------------------------


def test_not_an_onnx_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_text("this is not a protobuf\n")
    refused(["info", tmp_path / "model.onnx"], BAD, "not a readable ONNX model")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    refused(["info", tmp_path / "model.onnx"], BAD, "no ONNX graph")


def test_truncated_onnx_file(tmp_path: Path) -> None:
    whole = (MODELS / "cnn_nhwc.onnx").read_bytes()
    (tmp_path / "half.onnx").write_bytes(whole[: len(whole) // 2])
    refused(["info", tmp_path / "half.onnx"], BAD, "half.onnx")


def test_missing_file(tmp_path: Path) -> None:
    refused(["info", tmp_path / "nowhere.onnx"], BAD, ["not found", "nowhere.onnx"])


def test_folder_as_model(tmp_path: Path) -> None:
    refused(["info", tmp_path], BAD, "folder")


def test_two_inputs(tmp_path: Path) -> None:
    model = make_model_with(
        tmp_path / "two.onnx",
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    refused(["info", model], BAD, ["2 inputs", "--input-name"])
    refused(["info", model, "--input-name", "zz"], USAGE, "no input named 'zz'")
    # Naming one gets past the choice (the other input is then simply not fed: not our business here).
    assert invoke(["info", model, "--input-name", "a"]).exit_code == 0


def test_two_outputs(tmp_path: Path) -> None:
    model = make_model_with(
        tmp_path / "two_out.onnx",
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("y", "z")],
    )
    refused(["info", model], BAD, ["2 outputs", "--output-name"])
    assert invoke(["info", model, "--output-name", "z", "--layout", "flat"]).exit_code == 0


@pytest.mark.parametrize(
    "out_shape",
    [["N", 1], ["N", 3, 4, 4], ["N"], ["N", "K"]],
    ids=["one-score", "feature-map", "no-class-axis", "unknown-classes"],
)
def test_output_is_not_class_scores(tmp_path: Path, out_shape: list) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    if out_shape == ["N", 1]:
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0), helper.make_node("Unsqueeze", ["y", "one"], ["out"])]
        inits = {"axes": np.array([1, 2, 3], np.int64), "one": np.array([1], np.int64)}
    elif out_shape == ["N"]:
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["out"], keepdims=0)]
        inits = {"axes": np.array([1, 2, 3], np.int64)}
    else:
        nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["out"])]
        inits = {}
        if out_shape == ["N", "K"]:
            nodes[-1] = helper.make_node("Flatten", ["y"], ["out"], axis=1)
    model = make_model_with(
        tmp_path / "m.onnx", nodes, [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits
    )
    refused(["info", model], BAD, "one score per class")


def test_output_k_by_1_by_1_is_accepted(tmp_path: Path) -> None:
    """[N, K, 1, 1] (a conv head) is still one score per class."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    model = make_model_with(
        tmp_path / "gap.onnx",
        [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    result = invoke(["info", model, "--data", npz(tmp_path, np.full((4, 4, 4, 3), 0.5, np.float32)), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert '"classes": 3' in result.stdout


def test_custom_operator_domain(tmp_path: Path) -> None:
    model = make_model_with(
        tmp_path / "custom.onnx",
        [helper.make_node("MagicOp", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        extra_opsets={"com.example": 1},
        check=False,
    )
    refused(["info", model], BAD, "com.example")


def test_non_float_input(tmp_path: Path) -> None:
    model = make_model_with(
        tmp_path / "int.onnx",
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    refused(["info", model], BAD, "not float32")


def test_fixed_batch_above_one(tmp_path: Path) -> None:
    model = make_model_with(
        tmp_path / "b8.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
    )
    refused(["info", model], BAD, "fixed batch of 8")


def test_model_that_fails_when_run(tmp_path: Path) -> None:
    """A graph that loads but cannot run on the data (a Reshape that fits only some batches)."""
    model = make_model_with(
        tmp_path / "reshape.onnx",
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        {"shape": np.array([-1, 3], np.int64)},
    )
    data = npz(tmp_path, images(5).reshape(5, 16), np.zeros(5, np.int64))
    refused(["info", model, "--data", data], BAD, "failed to run the model")


def test_model_that_returns_the_wrong_number_of_rows(tmp_path: Path) -> None:
    model = make_model_with(
        tmp_path / "rows.onnx",
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        {"shape": np.array([-1, 2], np.int64)},
    )
    data = npz(tmp_path, images(5).reshape(5, 16), np.zeros(5, np.int64))
    refused(["info", model, "--data", data], BAD, "one row of class scores per input")


# --- external data ---------------------------------------------------------------------------------------


def external_model(folder: Path, location: str) -> Path:
    """A CNN whose weights live in external data, with every tensor's location set to ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(make_cnn(folder / "plain.onnx")))
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(m, str(folder / "model.onnx"))  # writes weights.bin beside it
    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(m, str(folder / "model.onnx"))
    return folder / "model.onnx"


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    model = external_model(tmp_path / "m", "weights.bin")
    assert invoke(["info", model]).exit_code == 0


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    model = external_model(tmp_path / "m", "../weights.bin")
    (tmp_path / "weights.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())  # it exists
    refused(["info", model], BAD, ["outside the model's folder", "../weights.bin"])


def test_external_data_absolute_path_is_refused(tmp_path: Path) -> None:
    model = external_model(tmp_path / "m", str((tmp_path / "m" / "weights.bin").resolve()))
    refused(["info", model], BAD, "outside the model's folder")


def test_external_data_missing(tmp_path: Path) -> None:
    model = external_model(tmp_path / "m", "gone.bin")
    refused(["info", model], BAD, ["gone.bin", "missing"])


# --- the data --------------------------------------------------------------------------------------------


def test_data_shape_does_not_fit(tmp_path: Path, cnn: Path) -> None:
    data = npz(tmp_path, np.zeros((5, 5, 5), np.float32), np.zeros(5, np.int64))
    refused(["info", cnn, "--data", data], BAD, "do not fit")


def test_nan_in_data(tmp_path: Path, cnn: Path) -> None:
    x = images()
    x[3, 2, 1] = np.nan
    refused(["info", cnn, "--data", npz(tmp_path, x, np.zeros(5, np.int64))], BAD, ["sample 3", "NaN"])


def test_values_outside_the_range(tmp_path: Path, cnn: Path) -> None:
    data = npz(tmp_path, images() * 3.0, np.zeros(5, np.int64))
    refused(["info", cnn, "--data", data], BAD, ["outside the valid range", "--range"])
    # The same data under a range that holds it is fine.
    assert invoke(["info", cnn, "--data", data, "--range", "0,3"]).exit_code == 0


def test_labels_outside_the_classes(tmp_path: Path, cnn: Path) -> None:
    data = npz(tmp_path, images(), np.array([0, 1, 2, 3, 0]))
    refused(["info", cnn, "--data", data], BAD, ["label 3", "3 classes"])
    data = npz(tmp_path, images(), np.array([0, -1, 2, 1, 0]), name="neg.npz")
    refused(["info", cnn, "--data", data], BAD, "label -1")


def test_labels_do_not_match_samples(tmp_path: Path, cnn: Path) -> None:
    refused(["info", cnn, "--data", npz(tmp_path, images(), np.zeros(4, np.int64))], BAD, "labels")


def test_data_missing(tmp_path: Path, cnn: Path) -> None:
    refused(["info", cnn, "--data", tmp_path / "none.npz"], BAD, "not found")


def test_data_format_unknown(tmp_path: Path, cnn: Path) -> None:
    (tmp_path / "data.weird").write_bytes(b"\x01\x02\x03")
    refused(["info", cnn, "--data", tmp_path / "data.weird"], BAD, "no data format")


def test_n_larger_than_the_data(tmp_path: Path, cnn: Path) -> None:
    data = npz(tmp_path, images(), np.zeros(5, np.int64))
    refused(["info", cnn, "--data", data, "--n", "6"], USAGE, ["--n 6", "(5)"])
    refused(["info", cnn, "--data", data, "--n", "3", "--start", "3"], USAGE, "--n 3")
    assert invoke(["info", cnn, "--data", data, "--n", "2", "--start", "3"]).exit_code == 0


def test_start_past_the_end(tmp_path: Path, cnn: Path) -> None:
    data = npz(tmp_path, images(), np.zeros(5, np.int64))
    refused(["info", cnn, "--data", data, "--start", "5"], USAGE, "past the end")
    refused(["info", "--start", "500"], USAGE, "past the end")  # the demo data hold 500


@pytest.mark.parametrize(("flag", "value"), [("--n", "0"), ("--n", "-3"), ("--start", "-1"), ("--batch-size", "0")])
def test_non_positive_counts(flag: str, value: str) -> None:
    refused(["info", flag, value], USAGE, flag)


# --- card flags: a value out of its domain is a usage error (2); a card that does not fit the model is 3 --


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--layout", "nwhc", "layout must be one of"),
        ("--range", "1,0", "lo < hi"),
        ("--range", "0", "two numbers"),
        ("--range", "a,b", "numbers"),
        ("--mean", "x", "mean"),
        ("--mean", "nan", "finite"),
        ("--mean", "", "mean"),
        ("--std", "0", "zeros"),
        ("--std", "inf", "finite"),
        ("--output", "scores", "logits, probs"),
        ("--channels", "0", "positive"),
        ("--classes", "a,,b", "non-empty"),
        ("--format", "xml", "table or json"),
        ("--device", "tpu", "auto, cpu or cuda"),
    ],
)
def test_bad_flag_value_is_a_usage_error(flag: str, value: str, says: str) -> None:
    refused(["info", DEMO_MODEL, flag, value], USAGE, says)


def test_mean_and_std_of_different_lengths_is_a_usage_error() -> None:
    refused(["info", "--mean", "0.1,0.2", "--std", "0.1,0.2,0.3"], USAGE, ["--mean", "--std"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mean", "0.1,0.2,0.3"], "1 channel"),  # three means for a grey model
        (["--classes", "a,b"], "2 classes"),  # the model has 10
        (["--layout", "flat"], "layout flat"),  # a 4-D input is not flat
        (["--layout", "nhwc"], "do not fit"),  # [1,28,28] read as NHWC: data no longer fit
        (["--channels", "3"], "3 channels"),
    ],
)
def test_card_that_does_not_fit_the_model(args: list, says: str) -> None:
    refused(["info", *args], BAD, says)


def test_bad_sidecar_is_a_card_error(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    sidecar = tmp_path / "mlp.onnx.l0tre.json"
    sidecar.write_text('{"layout": "sideways"}')
    refused(["info", model], BAD, "layout must be one of")
    sidecar.write_text("{not json")
    refused(["info", model], BAD, ["cannot read model card", "mlp.onnx.l0tre.json"])
    sidecar.write_text("[1, 2]")
    refused(["info", model], BAD, "JSON object")
    # A flag does not rescue a broken sidecar value of another field, but overrides the same field.
    sidecar.write_text('{"layout": "sideways"}')
    assert invoke(["info", model, "--layout", "flat"]).exit_code == 0


# --- through a real process: nothing escapes as a traceback ------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [("not-onnx", BAD), ("truncated", BAD), ("nan", BAD), ("bad-range-flag", USAGE), ("start", USAGE), ("runtime", BAD)],
)
def test_subprocess_errors_are_one_line(tmp_path: Path, case: str, code: int) -> None:
    cnn = make_cnn(tmp_path / "cnn.onnx")
    if case == "not-onnx":
        (tmp_path / "x.onnx").write_bytes(b"\x08\x07garbage")
        args = ["info", tmp_path / "x.onnx"]
    elif case == "truncated":
        whole = (MODELS / "cnn_maxpool_b1.onnx").read_bytes()
        (tmp_path / "x.onnx").write_bytes(whole[: len(whole) // 2])
        args = ["info", tmp_path / "x.onnx", "--data", DEMO_DATA]
    elif case == "nan":
        x = images()
        x[0, 0, 0] = np.nan
        args = ["info", cnn, "--data", npz(tmp_path, x)]
    elif case == "bad-range-flag":
        args = ["info", cnn, "--range", "2,1"]
    elif case == "start":
        args = ["info", cnn, "--data", npz(tmp_path, images()), "--start", "9"]
    else:
        model = make_model_with(
            tmp_path / "reshape.onnx",
            [helper.make_node("Reshape", ["x", "shape"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
            {"shape": np.array([-1, 3], np.int64)},
        )
        args = ["info", model, "--data", npz(tmp_path, images(5).reshape(5, 16))]
    proc = run_l0tre(args)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr)


def test_bad_metadata_is_a_card_error(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", metadata={"l0tre.range": "[0, 255"})
    refused(["info", model], BAD, ["l0tre.range", "not valid JSON"])
    model = make_mlp(tmp_path / "m2.onnx", metadata={"l0tre.layout": "sideways"})
    refused(["info", model], BAD, "layout must be one of")
