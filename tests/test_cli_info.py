"""``l0tre info``: the resolved model card, its sources, and the clean accuracy on data.

Runs on the embedded demo, on the trained MNIST models in tests/data/models/ (with the demo's
held-out images as data, so no download is needed) and on tiny models built by the helpers.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import (
    DEMO_DATA,
    MODELS,
    invoke,
    labelled_by_model,
    make_cnn,
    make_mlp,
    run_l0tre,
    write_npz,
)

CARD_SOURCES = {"flag", "sidecar", "metadata", "inferred", "default"}


def card_rows(table_output: str) -> dict[str, tuple[str, str]]:
    """field -> (value, source) from the "model card" table of ``l0tre info``."""
    lines = table_output.split("model card", 1)[1].splitlines()
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split("\u2502")]  # the table's column separator
        if len(cells) == 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def info_json(*args: object, plugins: tuple[str, ...] = ()) -> tuple[dict, str]:
    result = invoke(["info", *args, "--format", "json"], plugins=plugins)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


# --- the embedded demo ------------------------------------------------------------------------------


def test_demo_without_arguments_prints_card_and_accuracy() -> None:
    result = invoke(["info"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "mnist_cnn.onnx" in out
    assert "model card" in out
    # Every card row names where its value came from; the demo's card is its sidecar.
    rows = card_rows(out)
    assert rows["layout"] == ("nchw", "sidecar")
    assert rows["range"] == ("0.0,1.0", "sidecar")
    assert rows["output"] == ("logits", "sidecar")
    assert rows["classes"] == (",".join(map(str, range(10))), "sidecar")
    assert rows["mean"] == ("-", "")
    m = re.search(r"500 samples, clean accuracy ([\d.]+)%", out)
    assert m, out
    assert float(m.group(1)) > 90.0
    assert "warning" not in result.stderr


def test_demo_json() -> None:
    report, _ = info_json()
    model = report["model"]
    assert model["input"]["shape"] == ["N", 1, 28, 28]
    assert model["classes"] == 10
    assert model["batching"] == "native"
    card = model["card"]
    assert card["layout"] == "nchw" and card["range"] == [0.0, 1.0] and card["output"] == "logits"
    assert card["sources"]["layout"] == "sidecar"
    assert set(card["sources"].values()) <= CARD_SOURCES
    assert model["geometry"] == {
        "layout": "nchw",
        "sample_shape": [1, 28, 28],
        "pixels": 784,
        "channels": 1,
        "image_shape": [28, 28],
    }
    assert report["data"]["samples"] == 500
    assert report["data"]["accuracy"] > 0.9
    assert "warning" not in report["data"]


def test_flags_override_the_sidecar() -> None:
    names = ",".join(f"d{i}" for i in range(10))
    report, _ = info_json("--classes", names, "--n", "50")
    card = report["model"]["card"]
    assert card["classes"] == names.split(",")
    assert card["sources"]["classes"] == "flag"
    assert card["sources"]["layout"] == "sidecar"
    assert report["data"]["samples"] == 50

    rows = card_rows(invoke(["info", "--classes", names, "--n", "50"]).stdout)
    assert rows["classes"] == (names, "flag")
    assert rows["layout"] == ("nchw", "sidecar")


def test_start_and_n_select_a_window() -> None:
    report, _ = info_json("--start", "490", "--n", "10")
    assert report["data"]["samples"] == 10


def test_model_without_data_reports_no_accuracy(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    report, _ = info_json(model)
    assert "data" not in report


# --- the trained test models (no card: everything comes from flags or inference) -----------------------

REAL = [
    # file, input shape, layout, output, batching
    ("cnn_maxpool_b1.onnx", [1, 1, 28, 28], "nchw", "logits", "rewritten"),
    ("cnn_nhwc.onnx", ["N", 28, 28, 1], "nhwc", "probs", "native"),
    ("mlp_b1.onnx", [1, 784], "flat", "logits", "rewritten"),
]


@pytest.mark.parametrize(("name", "shape", "layout", "output", "batching"), REAL, ids=[r[0] for r in REAL])
def test_real_model_card_is_inferred(name: str, shape: list, layout: str, output: str, batching: str) -> None:
    report, stderr = info_json(MODELS / name, "--data", DEMO_DATA, "--n", "100")
    model = report["model"]
    assert model["input"]["shape"] == shape
    assert model["batching"] == batching
    card = model["card"]
    assert card["layout"] == layout and card["sources"]["layout"] == "inferred"
    assert card["output"] == output and card["sources"]["output"] == "inferred"
    assert card["sources"]["range"] == "default"
    assert model["geometry"]["pixels"] == 784 and model["geometry"]["channels"] == 1
    assert report["data"]["samples"] == 100
    assert report["data"]["accuracy"] > 0.9
    if batching == "rewritten":
        assert any("fixed batch" in note for note in model["notes"])
        assert "fixed batch" in stderr  # told to the user, on stderr
    assert "near chance" not in stderr


def test_normalisation_outside_the_graph_needs_the_flags() -> None:
    model = MODELS / "cnn_norm_outside.onnx"
    with_flags, _ = info_json(model, "--data", DEMO_DATA, "--n", "100", "--mean", "0.1307", "--std", "0.3081")
    card = with_flags["model"]["card"]
    assert card["mean"] == [0.1307] and card["std"] == [0.3081]
    assert card["sources"]["mean"] == "flag" and card["sources"]["std"] == "flag"
    good = with_flags["data"]["accuracy"]
    assert good > 0.95

    result = invoke(["info", model, "--data", DEMO_DATA, "--n", "100", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    without = json.loads(result.stdout)["data"]
    assert without["accuracy"] < good
    # The warning follows the rule: below twice chance (10 classes: 20%) the user is warned.
    if without["accuracy"] < 0.2:
        assert "near chance" in without["warning"] and "near chance" in result.stderr
    else:
        assert "warning" not in without and "near chance" not in result.stderr


def test_wrong_card_warns_on_stderr(tmp_path: Path) -> None:
    """Accuracy below twice chance gives a warning on stderr (and in the JSON); above, none."""
    model = make_cnn(tmp_path / "cnn.onnx", classes=3)
    x = np.random.default_rng(1).random((60, 4, 4), dtype=np.float32)
    right = labelled_by_model(model, x[:, None])
    write_npz(tmp_path / "right.npz", x, right)
    write_npz(tmp_path / "wrong.npz", x, (right + 1) % 3)  # every label wrong: accuracy 0

    ok = invoke(["info", model, "--data", tmp_path / "right.npz", "--device", "cpu"])
    assert ok.exit_code == 0
    assert "clean accuracy 100.0%" in ok.stdout
    assert "warning" not in ok.stderr

    bad = invoke(["info", model, "--data", tmp_path / "wrong.npz"])
    assert bad.exit_code == 0  # a warning, not an error: the card may be right and the model bad
    assert "clean accuracy 0.0%" in bad.stdout
    assert "warning" not in bad.stdout
    warnings = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "near chance" in warnings[0]

    report = json.loads(invoke(["info", model, "--data", tmp_path / "wrong.npz", "-f", "json"]).stdout)
    assert report["data"]["accuracy"] == 0.0 and "near chance" in report["data"]["warning"]


def test_unlabelled_data(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    write_npz(tmp_path / "x.npz", np.random.default_rng(0).random((7, 4, 4), dtype=np.float32))
    result = invoke(["info", model, "--data", tmp_path / "x.npz"])
    assert result.exit_code == 0, result.stderr
    assert "7 samples (no labels)" in result.stdout
    report, _ = info_json(model, "--data", tmp_path / "x.npz")
    assert report["data"] == {"source": "x.npz", "samples": 7}


MNIST_IMAGES = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")
HELD_OUT = [  # accuracy on t10k 8000-9999 as recorded in tests/data/models/README.md
    ("cnn_maxpool_b1.onnx", [], 0.9765),
    ("cnn_nhwc.onnx", [], 0.9775),
    ("mlp_b1.onnx", [], 0.9590),
    ("cnn_norm_outside.onnx", ["--mean", "0.1307", "--std", "0.3081"], 0.9770),
]


@pytest.mark.skipif(not MNIST_IMAGES.is_file(), reason=f"MNIST IDX files not present at {MNIST_IMAGES.parent}")
@pytest.mark.parametrize(("name", "flags", "recorded"), HELD_OUT, ids=[h[0] for h in HELD_OUT])
def test_held_out_accuracy_matches_the_recorded_one(name: str, flags: list, recorded: float) -> None:
    """The whole path (IDX reader, card, layout, batching) reproduces the training script's measurement."""
    report, _ = info_json(MODELS / name, "--data", MNIST_IMAGES, "--start", "8000", "--n", "2000", "--device", "cpu", *flags)
    assert report["data"]["samples"] == 2000
    assert report["data"]["accuracy"] == pytest.approx(recorded, abs=0.0006)  # one sample in 2000


# --- tiny fixture models: each layout, each way of storing the data ------------------------------------
# Labels are the model's own predictions on the data fed the way the test believes is right, so any
# mistake in layout or normalisation handling shows up as accuracy below 100%.


def varied(y: np.ndarray) -> np.ndarray:
    """Labels of more than one class, so that feeding the model wrongly would show."""
    assert len(np.unique(y)) >= 2, np.bincount(y)
    return y


def accuracy_of(model: Path, data: Path, *args: object) -> tuple[float, dict]:
    # On the CPU, as the reference labels were computed: exact agreement is expected.
    report, _ = info_json(model, "--data", data, "--device", "cpu", *args)
    return report["data"]["accuracy"], report["model"]


@pytest.mark.parametrize("stored", ["hwc", "model"])
def test_fixed_batch_nchw_rgb(tmp_path: Path, stored: str) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", layout="nchw", c=3, h=5, w=5, fixed_batch=True)
    x = np.random.default_rng(2).random((20, 5, 5, 3), dtype=np.float32)  # images, HWC
    y = varied(labelled_by_model(model, x.transpose(0, 3, 1, 2)))
    data = write_npz(tmp_path / "d.npz", x if stored == "hwc" else x.transpose(0, 3, 1, 2), y)
    acc, info = accuracy_of(model, data)
    assert acc == 1.0
    assert info["batching"] == "rewritten"
    assert info["input"]["shape"] == [1, 3, 5, 5]
    assert info["card"]["layout"] == "nchw" and info["card"]["sources"]["layout"] == "inferred"
    assert info["geometry"]["pixels"] == 25 and info["geometry"]["channels"] == 3


def test_nhwc_dynamic_batch_inferred(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", layout="nhwc", c=3, h=6, w=6, softmax=True)
    x = np.random.default_rng(3).random((20, 6, 6, 3), dtype=np.float32)
    data = write_npz(tmp_path / "d.npz", x, varied(labelled_by_model(model, x)))
    acc, info = accuracy_of(model, data)
    assert acc == 1.0
    assert info["batching"] == "native"
    assert info["card"]["layout"] == "nhwc" and info["card"]["sources"]["layout"] == "inferred"
    assert info["card"]["output"] == "probs" and info["card"]["sources"]["output"] == "inferred"


def test_nhwc_ambiguous_shape_with_layout_flag(tmp_path: Path) -> None:
    """[N,4,4,3] could be NCHW with 4 channels; --layout nhwc settles it."""
    model = make_cnn(tmp_path / "cnn.onnx", layout="nhwc", c=3, h=4, w=4)
    x = np.random.default_rng(4).random((20, 4, 4, 3), dtype=np.float32)
    data = write_npz(tmp_path / "d.npz", x, varied(labelled_by_model(model, x)))
    acc, info = accuracy_of(model, data, "--layout", "nhwc")
    assert acc == 1.0
    assert info["card"]["sources"]["layout"] == "flag"
    assert info["geometry"]["channels"] == 3 and info["geometry"]["pixels"] == 16


@pytest.mark.parametrize("input_shape", [None, (16, 1)], ids=["N,D", "N,D,1"])
@pytest.mark.parametrize("fixed_batch", [False, True], ids=["dynamic", "batch1"])
def test_flat_mlp(tmp_path: Path, input_shape: tuple | None, fixed_batch: bool) -> None:
    model = make_mlp(tmp_path / "mlp.onnx", d_in=16, input_shape=input_shape, fixed_batch=fixed_batch)
    images = np.random.default_rng(5).random((20, 4, 4), dtype=np.float32)
    flat = images.reshape(20, *(input_shape or (16,)))
    y = varied(labelled_by_model(model, flat))
    for stored in (images, flat):  # as 4x4 images, or exactly as the model takes them
        acc, info = accuracy_of(model, write_npz(tmp_path / "d.npz", stored, y))
        assert acc == 1.0
        assert info["card"]["layout"] == "flat" and info["card"]["sources"]["layout"] == "inferred"
        assert info["geometry"]["pixels"] == 16 and info["geometry"]["image_shape"] == [4, 4]
        assert info["batching"] == ("rewritten" if fixed_batch else "native")


def test_flat_mlp_with_rgb_pixels(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "mlp.onnx", d_in=48)
    images = np.random.default_rng(6).random((10, 4, 4, 3), dtype=np.float32)
    data = write_npz(tmp_path / "d.npz", images, varied(labelled_by_model(model, images.reshape(10, 48))))
    acc, info = accuracy_of(model, data, "--channels", "3")
    assert acc == 1.0
    assert info["geometry"]["pixels"] == 16 and info["geometry"]["channels"] == 3


def test_normalisation_in_graph_needs_no_flags(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", c=3, h=5, w=5, normalise=([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]))
    x = np.random.default_rng(7).random((20, 3, 5, 5), dtype=np.float32)
    acc, info = accuracy_of(model, write_npz(tmp_path / "d.npz", x, varied(labelled_by_model(model, x))))
    assert acc == 1.0
    assert info["card"]["mean"] is None and info["card"]["std"] is None


def test_normalisation_outside_graph_matches_graph(tmp_path: Path) -> None:
    """--mean/--std on a bare model give exactly what the same model with Sub/Div in its graph gives."""
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    inside = make_cnn(tmp_path / "inside.onnx", c=3, h=5, w=5, normalise=(mean, std), seed=9)
    outside = make_cnn(tmp_path / "outside.onnx", c=3, h=5, w=5, seed=9)
    x = np.random.default_rng(8).random((30, 3, 5, 5), dtype=np.float32)
    data = write_npz(tmp_path / "d.npz", x, varied(labelled_by_model(inside, x)))
    acc, info = accuracy_of(outside, data, "--mean", "0.4,0.5,0.6", "--std", "0.2,0.25,0.3")
    assert acc == 1.0
    assert info["card"]["mean"] == mean and info["card"]["sources"]["std"] == "flag"


def test_range_flag_scales_uint8_data(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    raw = np.random.default_rng(10).integers(0, 256, (20, 4, 4), dtype=np.uint8)
    scaled = -1.0 + raw.astype(np.float32) / 255.0 * 2.0  # uint8 data mapped onto the range [-1, 1]
    data = write_npz(tmp_path / "d.npz", raw, varied(labelled_by_model(model, scaled[:, None])))
    acc, info = accuracy_of(model, data, "--range", "-1,1")
    assert acc == 1.0
    assert info["card"]["range"] == [-1.0, 1.0] and info["card"]["sources"]["range"] == "flag"


# --- the installed command, in a child process ---------------------------------------------------------


def test_subprocess_json_is_clean_stdout() -> None:
    proc = run_l0tre(["info", MODELS / "cnn_maxpool_b1.onnx", "--data", DEMO_DATA, "--n", "100", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert report["model"]["card"]["sources"]["layout"] == "inferred"
    assert report["data"]["accuracy"] > 0.9
    assert "fixed batch" in proc.stderr  # the note went to stderr


def test_console_script() -> None:
    # pip puts the console script beside the interpreter of the environment it installs into
    script = Path(sys.executable).with_name("l0tre")
    assert script.exists(), f"no l0tre console script beside {sys.executable}: is l0tre installed here?"
    import subprocess

    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("l0tre ")
