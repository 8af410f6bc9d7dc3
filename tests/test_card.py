"""The model card (flag > sidecar > metadata > inferred, with sources) and pixel geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import invoke, make_cnn, make_mlp
from l0tre_core.card import (
    ModelCard,
    metadata_fields,
    normalise_field,
    read_sidecar,
    resolve_card,
    sidecar_path,
    with_field,
)
from l0tre_core.errors import CardError, ModelError
from l0tre_core.geometry import geometry_for, infer_layout
from l0tre_core.model import load_model

# --- resolution order --------------------------------------------------------------------------------


def test_resolve_card_first_source_wins_field_by_field() -> None:
    card = resolve_card(
        flags={"layout": "nhwc", "mean": None},
        sidecar={"layout": "flat", "range": [0, 255], "classes": ["a", "b"]},
        metadata={"layout": "nchw", "range": "0,2", "mean": "0.5", "output": "probs"},
        inferred={"layout": "nchw", "output": "logits"},
    )
    assert card.layout == "nhwc" and card.sources["layout"] == "flag"
    assert card.range == (0.0, 255.0) and card.sources["range"] == "sidecar"
    assert card.classes == ("a", "b") and card.sources["classes"] == "sidecar"
    assert card.mean == (0.5,) and card.sources["mean"] == "metadata"  # a None flag does not count
    assert card.output == "probs" and card.sources["output"] == "metadata"
    assert card.std is None and "std" not in card.sources


def test_resolve_card_defaults() -> None:
    card = resolve_card(flags={}, sidecar={}, metadata={}, inferred={})
    assert (card.layout, card.range, card.output) == ("nchw", (0.0, 1.0), "logits")
    assert card.sources == {"layout": "default", "range": "default", "output": "default"}
    assert card.to_dict()["sources"] == dict(card.sources)


def test_metadata_fields() -> None:
    fields = metadata_fields(
        {
            "l0tre.layout": "nhwc",
            "l0tre.range": "[0, 255]",
            "l0tre.classes": '["cat", "dog"]',
            "l0tre.mean": "0.1,0.2,0.3",
            "l0tre.description": "a model",
            "l0tre.unknown": "ignored",
            "author": "someone",
        }
    )
    assert fields == {
        "layout": "nhwc",
        "range": [0, 255],
        "classes": ["cat", "dog"],
        "mean": "0.1,0.2,0.3",
        "description": "a model",
    }


def test_metadata_with_broken_json_is_a_card_error() -> None:
    with pytest.raises(CardError, match="l0tre.range"):
        metadata_fields({"l0tre.range": "[0, 255"})


def test_with_field() -> None:
    card = resolve_card(flags={}, sidecar={}, metadata={}, inferred={"layout": "flat"})
    changed = with_field(card, "range", "-1,1", "flag")
    assert changed.range == (-1.0, 1.0) and changed.sources["range"] == "flag"
    assert changed.sources["layout"] == "inferred" and card.sources["range"] == "default"


def test_sidecar_reading(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    assert sidecar_path(model) == tmp_path / "m.onnx.l0tre.json"
    assert read_sidecar(model) == {}
    sidecar_path(model).write_text(json.dumps({"layout": "flat", "_notes": {"anything": 1}}))
    assert read_sidecar(model) == {"layout": "flat"}  # keys starting with _ are comments
    sidecar_path(model).write_text("{")
    with pytest.raises(CardError, match="cannot read model card"):
        read_sidecar(model)
    sidecar_path(model).write_text('"nchw"')
    with pytest.raises(CardError, match="JSON object"):
        read_sidecar(model)


def card_model(tmp_path: Path, metadata: dict, sidecar: dict | None) -> Path:
    """A 6x6 RGB NHWC CNN (layout inferable) with the given metadata and sidecar."""
    model = make_cnn(tmp_path / "m.onnx", layout="nhwc", c=3, h=6, w=6, classes=2, metadata=metadata)
    if sidecar is not None:
        sidecar_path(model).write_text(json.dumps(sidecar))
    return model


def test_four_sources_on_a_real_file(tmp_path: Path) -> None:
    model = card_model(
        tmp_path,
        metadata={
            "l0tre.range": "0,255",
            "l0tre.mean": "[120, 110, 100]",
            "l0tre.std": "60",
            "l0tre.output": "probabilities",
            "l0tre.classes": "cat,dog",
        },
        sidecar={"range": [0, 1], "mean": [0.5, 0.4, 0.3], "description": "from the sidecar"},
    )
    clf = load_model(model, card={"mean": "0.45,0.45,0.45"}, device="cpu")
    card = clf.card
    assert card.mean == (0.45, 0.45, 0.45) and card.sources["mean"] == "flag"
    assert card.range == (0.0, 1.0) and card.sources["range"] == "sidecar"
    assert card.description == "from the sidecar" and card.sources["description"] == "sidecar"
    assert card.std == (60.0,) and card.sources["std"] == "metadata"
    assert card.output == "probs" and card.sources["output"] == "metadata"
    assert card.classes == ("cat", "dog") and card.sources["classes"] == "metadata"
    assert card.layout == "nhwc" and card.sources["layout"] == "inferred"

    # The same through the command line, where the sources are shown.
    result = invoke(["info", model, "--mean", "0.45,0.45,0.45", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    sources = json.loads(result.stdout)["model"]["card"]["sources"]
    assert sources == {
        "mean": "flag",
        "range": "sidecar",
        "description": "sidecar",
        "std": "metadata",
        "output": "metadata",
        "classes": "metadata",
        "layout": "inferred",
    }


def test_each_source_alone(tmp_path: Path) -> None:
    """The layout from each source in turn, everything above it removed."""
    model = card_model(tmp_path, metadata={"l0tre.layout": "nhwc"}, sidecar={"layout": "nhwc"})
    assert load_model(model, card={"layout": "nhwc"}).card.sources["layout"] == "flag"
    assert load_model(model).card.sources["layout"] == "sidecar"
    sidecar_path(model).unlink()
    assert load_model(model).card.sources["layout"] == "metadata"
    model = card_model(tmp_path, metadata={}, sidecar=None)
    assert load_model(model).card.sources["layout"] == "inferred"


def test_a_lower_source_cannot_break_a_field_set_above(tmp_path: Path) -> None:
    model = card_model(tmp_path, metadata={"l0tre.layout": "diagonal"}, sidecar=None)
    with pytest.raises(CardError, match="layout must be one of"):
        load_model(model)
    assert load_model(model, card={"layout": "nhwc"}).card.layout == "nhwc"


def test_inferred_output_kind(tmp_path: Path) -> None:
    assert load_model(make_cnn(tmp_path / "a.onnx", softmax=True)).card.output == "probs"
    assert load_model(make_cnn(tmp_path / "b.onnx")).card.output == "logits"


def test_card_classes_must_match_the_outputs(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", classes=3)
    with pytest.raises(CardError, match="names 2 classes"):
        load_model(model, card={"classes": "a,b"})
    assert load_model(model, card={"classes": "a,b,c"}).n_classes == 3


def test_card_error_is_a_model_error() -> None:
    assert issubclass(CardError, ModelError) and CardError.exit_code == 3


# --- field values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("layout", "NHWC", "nhwc"),
        ("output", "softmax", "probs"),
        ("output", "Logits", "logits"),
        ("range", "0, 255", (0.0, 255.0)),
        ("range", [-1, 1], (-1.0, 1.0)),
        ("mean", 0.5, (0.5,)),
        ("mean", "0.1,0.2,0.3", (0.1, 0.2, 0.3)),
        ("std", [1, 2], (1.0, 2.0)),
        ("classes", "cat, dog", ("cat", "dog")),
        ("classes", [0, 1], ("0", "1")),
        ("channels", "3", 3),
        ("description", 5, "5"),
    ],
)
def test_normalise_field_accepts(name: str, value: object, expected: object) -> None:
    assert normalise_field(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("layout", "chw"),
        ("output", "scores"),
        ("range", "1,0"),
        ("range", "0,0"),
        ("range", [0, 1, 2]),
        ("range", "0,inf"),
        ("range", {"lo": 0}),
        ("mean", "a,b"),
        ("mean", "nan"),
        ("mean", ""),
        ("std", "0.5,0"),
        ("classes", "a,,b"),
        ("classes", 3),
        ("channels", 0),
        ("channels", "two"),
        ("colour", "blue"),
    ],
)
def test_normalise_field_refuses(name: str, value: object) -> None:
    with pytest.raises(CardError):
        normalise_field(name, value)


def test_mean_and_std_lengths_must_agree() -> None:
    with pytest.raises(CardError, match="`mean` has 2 values but `std` has 3") as refused:
        resolve_card(flags={"mean": "1,2", "std": "1,2,3"}, sidecar={}, metadata={}, inferred={})
    assert refused.value.field == "std"
    # One value broadcasts over the channels.
    card = resolve_card(flags={"mean": "1,2,3", "std": "2"}, sidecar={}, metadata={}, inferred={})
    assert card.std == (2.0,)


def test_unknown_sidecar_field_is_refused(tmp_path: Path) -> None:
    model = card_model(tmp_path, metadata={}, sidecar={"layuot": "nhwc"})  # a typo is not ignored
    with pytest.raises(CardError, match="unknown model card field 'layuot'"):
        load_model(model)


def test_model_card_dataclass_properties() -> None:
    card = ModelCard(range=(-2.0, 3.0))
    assert (card.lo, card.hi) == (-2.0, 3.0)


# --- geometry ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        (("N", 1, 28, 28), "nchw"),
        ((1, 3, 32, 32), "nchw"),
        (("N", 28, 28, 1), "nhwc"),
        (("N", 224, 224, 3), "nhwc"),
        (("N", 784), "flat"),
        ((1, 784, 1), "flat"),
        (("N", 4, 5, 6), "nchw"),  # nothing looks like channels: NCHW is the ONNX convention
        (("N", "C", "H", "W"), None),
        (("N", 2, 3, 4, 5), None),
        (("N",), None),
    ],
)
def test_infer_layout(shape: tuple, layout: str | None) -> None:
    assert infer_layout(shape) == layout


def test_geometry_facts() -> None:
    g = geometry_for(("N", 3, 4, 5), "nchw", None)
    assert (g.n_pixels, g.n_channels, g.image_shape, g.n_features) == (20, 3, (4, 5), 60)
    g = geometry_for(("N", 4, 5, 3), "nhwc", 3)
    assert (g.n_pixels, g.n_channels, g.image_shape, g.sample_shape) == (20, 3, (4, 5), (4, 5, 3))
    g = geometry_for((1, 48), "flat", 3)
    assert (g.n_pixels, g.n_channels, g.image_shape) == (16, 3, (4, 4))
    g = geometry_for(("N", 10, 1), "flat", None)
    assert (g.n_pixels, g.n_channels, g.image_shape) == (10, 1, None)
    assert g.to_dict()["image_shape"] is None


@pytest.mark.parametrize(
    ("shape", "layout", "channels", "says"),
    [
        (("N", 3, "H", 4), "nchw", None, "non-fixed"),
        (("N", 784), "nchw", None, "4-D"),
        (("N", 3, 4, 4), "flat", None, "flat needs"),
        (("N", 784, 2), "flat", None, "flat needs"),
        (("N", 10), "flat", 3, "cannot hold"),
        (("N", 3, 4, 4), "nchw", 1, "1 channel\\b"),
        (("N", 4, 4, 3), "nhwc", 1, "1 channel\\b"),
        (("N", 16), "diagonal", None, "unknown layout"),
    ],
)
def test_geometry_refuses(shape: tuple, layout: str, channels: int | None, says: str) -> None:
    with pytest.raises(CardError, match=says):
        geometry_for(shape, layout, channels)


def canonical(n: int, p: int, c: int) -> np.ndarray:
    return np.arange(n * p * c, dtype=np.float32).reshape(n, p, c)


def test_to_model_nchw_and_nhwc_by_hand() -> None:
    xc = canonical(2, 6, 3)  # 2 samples, 2x3 pixels, 3 channels
    nchw = geometry_for(("N", 3, 2, 3), "nchw", None).to_model(xc)
    nhwc = geometry_for(("N", 2, 3, 3), "nhwc", None).to_model(xc)
    assert nchw.shape == (2, 3, 2, 3) and nhwc.shape == (2, 2, 3, 3)
    for n in range(2):
        for p in range(6):
            i, j = divmod(p, 3)  # pixels are row-major
            for ch in range(3):
                assert nchw[n, ch, i, j] == xc[n, p, ch]
                assert nhwc[n, i, j, ch] == xc[n, p, ch]


@pytest.mark.parametrize(
    ("shape", "layout", "channels"),
    [
        (("N", 1, 4, 4), "nchw", None),
        (("N", 3, 2, 5), "nchw", None),
        (("N", 2, 5, 3), "nhwc", None),
        (("N", 16), "flat", None),
        (("N", 48), "flat", 3),
        (("N", 16, 1), "flat", None),
    ],
)
def test_round_trip_and_pixel_ids(shape: tuple, layout: str, channels: int | None) -> None:
    g = geometry_for(shape, layout, channels)
    xc = canonical(3, g.n_pixels, g.n_channels)
    xm = g.to_model(xc)
    assert xm.shape == (3, *g.sample_shape)
    np.testing.assert_array_equal(g.from_model(xm), xc)

    # pixel_ids: for each scalar of the flat model input, its pixel; every pixel owns one scalar per channel.
    ids = g.pixel_ids()
    ch = g.channel_ids()
    assert ids.shape == ch.shape == (g.n_features,)
    assert np.bincount(ids).tolist() == [g.n_channels] * g.n_pixels
    flat = xm.reshape(3, -1)
    for k in range(g.n_features):  # the scalar at k is canonical (pixel ids[k], channel ch[k])
        assert flat[0, k] == xc[0, ids[k], ch[k]]


def test_pixel_ids_group_the_channels_of_one_pixel() -> None:
    nchw = geometry_for(("N", 3, 2, 2), "nchw", None)
    assert nchw.pixel_ids().tolist() == [0, 1, 2, 3] * 3  # channel planes
    assert nchw.channel_ids().tolist() == [0] * 4 + [1] * 4 + [2] * 4
    nhwc = geometry_for(("N", 2, 2, 3), "nhwc", None)
    assert nhwc.pixel_ids().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # channels interleaved
    flat = geometry_for(("N", 8), "flat", 2)
    assert flat.pixel_ids().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(["nchw", "nhwc", "flat"]),
    c=st.integers(1, 4),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    n=st.integers(1, 3),
)
def test_round_trip_property(layout: str, c: int, h: int, w: int, n: int) -> None:
    shape = {"nchw": ("N", c, h, w), "nhwc": ("N", h, w, c), "flat": ("N", h * w * c)}[layout]
    g = geometry_for(shape, layout, c if layout == "flat" else None)
    xc = np.random.default_rng(h * 100 + w * 10 + c).random((n, h * w, c)).astype(np.float32)
    xm = g.to_model(xc)
    np.testing.assert_array_equal(g.from_model(xm), xc)
    # Changing one pixel in canonical form changes exactly the scalars pixel_ids assigns to it.
    pixel = (h * w) // 2
    changed = xc.copy()
    changed[:, pixel, :] += 1.0
    diff = (g.to_model(changed) != xm).reshape(n, -1)[0]
    assert np.flatnonzero(diff).tolist() == np.flatnonzero(g.pixel_ids() == pixel).tolist()


def test_classifier_model_input_applies_card(tmp_path: Path) -> None:
    """Normalisation per channel, then layout: model value = (x - mean) / std at the right place."""
    clf = load_model(make_cnn(tmp_path / "m.onnx", layout="nhwc", c=3, h=5, w=5), card={"mean": "0.1,0.2,0.3", "std": "0.5,0.25,2"})
    xc = np.random.default_rng(0).random((2, 25, 3)).astype(np.float32)
    xm = clf.model_input(xc)
    assert xm.shape == (2, 5, 5, 3)
    want = (xc - np.array([0.1, 0.2, 0.3], np.float32)) / np.array([0.5, 0.25, 2.0], np.float32)
    np.testing.assert_allclose(xm.reshape(2, 25, 3), want, rtol=1e-6)
    scale, shift = clf.affine()
    np.testing.assert_allclose(scale * xc.astype(np.float64) + shift, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(CardError, match="2 values"):
        load_model(tmp_path / "m.onnx", card={"mean": "0.1,0.2"})
