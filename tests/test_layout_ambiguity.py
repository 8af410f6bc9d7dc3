"""Issue #8: data that fit the model in more than one layout are refused, not read one way silently.

A model input ``[N, 3, 3, 3]`` (or ``[N, 4, 4, 4]``, or ``[N, 3, 32, 3]``) is NCHW or NHWC with
nothing in its shape to tell which; ``infer_layout`` falls back on the ONNX convention. Data that
fit both readings give different pixels (and, for images stored H,W,C, different model inputs), so
different bounds: l0tre stops with a usage error (exit 2) that lists the readings and names
``--layout``, unless the layout is declared (flag, sidecar card or metadata).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, invoke, make_cnn, write_npz
from l0tre_core.card import sidecar_path
from l0tre_core.data import fit_to_model, load_data
from l0tre_core.errors import UsageError
from l0tre_core.geometry import ambiguous_layouts, geometry_for, infer_layout
from l0tre_core.model import load_model
from l0tre_core.contracts import RawData


def rng_images(shape: tuple[int, ...], n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def cube_model(tmp_path: Path, side: int = 3, **kwargs) -> Path:
    """A CNN on ``[N, side, side, side]``: channels = height = width, NCHW by construction."""
    return make_cnn(tmp_path / "cube.onnx", layout="nchw", c=side, h=side, w=side, **kwargs)


# --- which shapes are ambiguous ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layouts"),
    [
        (("N", 3, 3, 3), ("nchw", "nhwc")),
        (("N", 4, 4, 4), ("nchw", "nhwc")),
        ((1, 3, 32, 3), ("nchw", "nhwc")),  # 32x3 or 3x32 images of 3 channels
        (("N", 3, 5, 4), ("nchw", "nhwc")),  # neither reading gives square images
        (("N", 3, 4, 4), ("nchw",)),  # square images only as NCHW
        (("N", 4, 4, 3), ("nhwc",)),  # square images only as NHWC
        (("N", 3, 3, 4), ("nhwc",)),
        (("N", 1, 28, 28), ("nchw",)),
        (("N", 28, 28, 1), ("nhwc",)),
        (("N", 3, 3, 1), ("nhwc",)),  # a single channel decides
        (("N", 1, 3, 3), ("nchw",)),
        (("N", 32, 32, 3), ("nhwc",)),
        (("N", 3, 32, 32), ("nchw",)),
        (("N", 784), ("flat",)),
        (("N", "C", "H", "W"), ()),
    ],
)
def test_ambiguous_layouts(shape: tuple, layouts: tuple) -> None:
    assert ambiguous_layouts(shape) == layouts
    if len(layouts) == 1:
        assert infer_layout(shape) == layouts[0]  # decided shapes keep their inferred layout


def test_the_model_remembers_the_other_reading_only_when_its_layout_was_guessed(tmp_path: Path) -> None:
    model = cube_model(tmp_path)
    assert load_model(model).geometry.alternatives == ("nhwc",)
    assert load_model(model, card={"layout": "nchw"}).geometry.alternatives == ()
    assert load_model(make_cnn(tmp_path / "rgb.onnx", layout="nhwc", c=3, h=4, w=4)).geometry.alternatives == ()


# --- refused ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [3, 4])
def test_ambiguous_npz_is_refused_naming_layout(tmp_path: Path, side: int) -> None:
    model = cube_model(tmp_path, side=side)
    data = write_npz(tmp_path / "x.npz", rng_images((side, side, side)))
    r = invoke(["robustness", model, "--data", data, "--max-t", "1", "--lower", "discrete", "--format", "json"])
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = assert_one_line_error(r.stderr, contains=["--layout nchw", "--layout nhwc", "C,H,W", "H,W,C"])
    assert f"[{side}, {side}, {side}]" in line
    assert r.stdout.strip() == ""  # nothing was computed


def test_ambiguous_csv_images_are_refused(tmp_path: Path) -> None:
    """Images stored H,W,C (CSV rows) would be transposed for NCHW and fed as they are for NHWC."""
    model = cube_model(tmp_path)
    pixels = (rng_images((27,), n=3) * 255).astype(np.uint8)
    rows = [",".join(str(v) for v in [i % 3, *row]) for i, row in enumerate(pixels)]
    csv = tmp_path / "x.csv"
    csv.write_text("\n".join(rows) + "\n")
    r = invoke(["info", model, "--data", csv])
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert_one_line_error(r.stderr, contains=["--layout", "transposed"])
    assert invoke(["info", model, "--data", csv, "--layout", "nhwc"]).exit_code == 0


def test_python_api_refuses_too(tmp_path: Path) -> None:
    model = cube_model(tmp_path)
    data = write_npz(tmp_path / "x.npz", rng_images((3, 3, 3)))
    clf = load_model(model)
    with pytest.raises(UsageError, match="`layout`") as refused:
        load_data(data, clf.geometry, clf.card.range)
    assert refused.value.field == "layout"
    declared = load_model(model, card={"layout": "nhwc"})
    assert len(load_data(data, declared.geometry, declared.card.range)) == 2


# --- declared: runs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_the_same_data_run_with_layout(tmp_path: Path, layout: str) -> None:
    model = cube_model(tmp_path)
    data = write_npz(tmp_path / "x.npz", rng_images((3, 3, 3)))
    r = invoke(["robustness", model, "--data", data, "--layout", layout, "--max-t", "1", "--lower", "discrete",
                "--format", "json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"]["card"]["layout"] == layout and report["model"]["card"]["sources"]["layout"] == "flag"
    assert report["model"]["geometry"]["channels"] == 3 and len(report["samples"]) == 2


def test_the_two_readings_really_differ(tmp_path: Path) -> None:
    """What the refusal protects against: the same file means different pixels under each layout."""
    model = cube_model(tmp_path)
    data = write_npz(tmp_path / "x.npz", rng_images((3, 3, 3)))
    pixels = {}
    for layout in ("nchw", "nhwc"):
        clf = load_model(model, card={"layout": layout})
        pixels[layout] = load_data(data, clf.geometry, clf.card.range).x
    assert pixels["nchw"].shape == pixels["nhwc"].shape == (2, 9, 3)
    assert not np.array_equal(pixels["nchw"], pixels["nhwc"])


@pytest.mark.parametrize("where", ["sidecar", "metadata"])
def test_a_model_card_fixes_the_layout(tmp_path: Path, where: str) -> None:
    if where == "metadata":
        model = cube_model(tmp_path, metadata={"l0tre.layout": "nhwc"})
    else:
        model = cube_model(tmp_path)
        sidecar_path(model).write_text(json.dumps({"layout": "nhwc"}))
    data = write_npz(tmp_path / "x.npz", rng_images((3, 3, 3)))
    r = invoke(["info", model, "--data", data, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["model"]["card"]["sources"]["layout"] == where


def test_fit_to_model_with_a_declared_geometry_reads_model_shaped_samples_in_the_model_layout() -> None:
    x = rng_images((3, 3, 3))
    for layout in ("nchw", "nhwc"):
        g = geometry_for(("N", 3, 3, 3), layout, None)
        data = fit_to_model(RawData(x, None, "as-is"), g, (0.0, 1.0), "x")
        assert data.layout == "model" and np.array_equal(g.to_model(data.x), x)


# --- unambiguous data are unaffected --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "c", "hw", "sample"),
    [
        ("nchw", 1, 28, (28, 28)),  # MNIST grey, stored H,W
        ("nchw", 1, 28, (1, 28, 28)),  # ... or in the model's own shape
        ("nhwc", 1, 28, (28, 28, 1)),
        ("nhwc", 3, 32, (32, 32, 3)),  # CIFAR-like RGB
        ("nchw", 3, 32, (32, 32, 3)),  # H,W,C images for an NCHW model
        ("nchw", 3, 32, (3, 32, 32)),
        ("nchw", 3, 4, (4, 4, 3)),  # [N,3,4,4]: square only as NCHW
        ("nhwc", 3, 4, (4, 4, 3)),  # [N,4,4,3]: square only as NHWC
    ],
)
def test_unambiguous_data_run_without_layout(tmp_path: Path, layout: str, c: int, hw: int, sample: tuple) -> None:
    model = make_cnn(tmp_path / "m.onnx", layout=layout, c=c, h=hw, w=hw)
    data = write_npz(tmp_path / "x.npz", rng_images(sample, n=2))
    r = invoke(["info", model, "--data", data, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"]["card"]["layout"] == layout and report["model"]["card"]["sources"]["layout"] == "inferred"
    assert report["data"]["samples"] == 2
