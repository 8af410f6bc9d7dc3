"""The built-in data-set formats (plugin l0tre_formats): happy paths, every error path, fuzzing."""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l0tre_core.data import find_format, fit_to_model
from l0tre_core.errors import DataError
from l0tre_core.geometry import geometry_for
from l0tre_core.host import create_host
from l0tre_core.contracts import DataFormat
from l0tre_formats import CsvFormat, FolderFormat, IdxFormat, NpzFormat

MNIST = Path("/work/shared/data/mnist")
MNIST_IMAGES = MNIST / "t10k-images-idx3-ubyte.gz"
needs_mnist = pytest.mark.skipif(not MNIST_IMAGES.exists(), reason="the shared MNIST files are not on this machine")

npz, idx, csv, folder = NpzFormat(), IdxFormat(), CsvFormat(), FolderFormat()


def idx_bytes(a: np.ndarray, code: int) -> bytes:
    """An IDX file for ``a`` with dtype byte ``code`` (big-endian data, as the format wants)."""
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, images: dict[str, np.ndarray]) -> Path:
    """``images`` maps ``class/file.png`` to a uint8 array."""
    for rel, a in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png_bytes(a))
    return root


# --- registration ---------------------------------------------------------------------------------


def test_the_four_formats_are_registered_through_the_entry_point() -> None:
    formats = create_host().registry("data_formats")
    assert {"npz", "idx", "folder", "csv"} <= set(formats)
    for fmt in formats.values():
        assert isinstance(fmt, DataFormat) and fmt.description


@needs_mnist
def test_find_format_picks_each_format(tmp_path: Path) -> None:
    formats = create_host().registry("data_formats")
    (tmp_path / "a.NPZ").write_bytes(npz_bytes(x=np.zeros((1, 2))))
    (tmp_path / "a.csv").write_text("1,2\n")
    (tmp_path / "images.bin").write_bytes(idx_bytes(np.zeros((1, 2, 2), np.uint8), 0x08))
    (tmp_path / "dir").mkdir()
    assert find_format(tmp_path / "a.NPZ", formats).name == "npz"
    assert find_format(tmp_path / "a.csv", formats).name == "csv"
    assert find_format(tmp_path / "images.bin", formats).name == "idx"
    assert find_format(tmp_path / "dir", formats).name == "folder"
    assert find_format(MNIST_IMAGES, formats).name == "idx"


# --- npz ------------------------------------------------------------------------------------------


def test_npz_reads_x_and_y_as_is(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    x = np.random.default_rng(0).random((3, 1, 4, 4)).astype(np.float32)
    p.write_bytes(npz_bytes(x=x, y=np.array([2.0, 0.0, 1.0])))
    raw = npz.load(p, None)
    assert raw.layout == "as-is"
    np.testing.assert_array_equal(raw.x, x)
    assert raw.y is not None and raw.y.dtype == np.int64 and raw.y.tolist() == [2, 0, 1]


def test_npz_without_y_is_unlabelled_and_labels_file_overrides(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    p.write_bytes(npz_bytes(x=np.zeros((2, 3))))
    assert npz.load(p, None).y is None
    lab = tmp_path / "labels.txt"
    lab.write_text("4\n5\n")
    assert npz.load(p, lab).y.tolist() == [4, 5]  # type: ignore[union-attr]


def test_npz_object_array_is_refused_not_unpickled(tmp_path: Path) -> None:
    p = tmp_path / "evil.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="evil.npz"):
        npz.load(p, None)


def test_npz_missing_x_names_the_arrays_present(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    p.write_bytes(npz_bytes(images=np.zeros((2, 3)), labels=np.zeros(2)))
    with pytest.raises(DataError, match=r"no array named x \(arrays present: images, labels\)"):
        npz.load(p, None)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a zip at all", "cannot read .npz"),
        (b"", "cannot read .npz"),
        (npz_bytes(x=np.zeros((4, 4)))[:60], "cannot read .npz"),
    ],
    ids=["text", "empty", "cut-zip"],
)
def test_npz_garbage_is_a_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "d.npz"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        npz.load(p, None)


def test_npz_holding_a_single_npy_array_is_explained(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    with p.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single .npy array"):
        npz.load(p, None)


# --- idx ------------------------------------------------------------------------------------------


@needs_mnist
def test_idx_reads_real_mnist_with_labels_found_beside() -> None:
    assert idx.matches(MNIST_IMAGES)
    raw = idx.load(MNIST_IMAGES, None)
    assert raw.layout == "hwc"
    assert raw.x.shape == (10000, 28, 28) and raw.x.dtype == np.uint8
    assert raw.y is not None and raw.y.shape == (10000,)
    assert raw.y[0] == 7


def test_idx_labels_beside_with_dotted_names_and_missing_labels(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    images = tmp_path / "t10k-images.idx3-ubyte.gz"
    images.write_bytes(gzip.compress(idx_bytes(x, 0x08)))
    assert idx.load(images, None).y is None
    (tmp_path / "t10k-labels.idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([3, 9], np.uint8), 0x08)))
    raw = idx.load(images, None)
    np.testing.assert_array_equal(raw.x, x)
    assert raw.y is not None and raw.y.tolist() == [3, 9]


@pytest.mark.parametrize(
    "code, dtype",
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_idx_every_dtype_round_trips_big_endian(tmp_path: Path, code: int, dtype: type) -> None:
    x = (np.arange(2 * 2 * 3 * 3) % 100 - (0 if dtype == np.uint8 else 50)).astype(dtype).reshape(2, 2, 3, 3)
    p = tmp_path / "imgs"
    p.write_bytes(idx_bytes(x, code))
    assert idx.matches(p)
    raw = idx.load(p, None)
    assert raw.x.dtype == np.dtype(dtype) and raw.x.dtype.isnative
    np.testing.assert_array_equal(raw.x, x)


def test_idx_matches_only_idx_content(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"hello world"))
    (tmp_path / "b").write_bytes(b"\x00\x00\x07\x03")  # 0x07 is no IDX type
    (tmp_path / "c.gz").write_bytes(b"\x1f\x8bbroken")
    assert not idx.matches(tmp_path / "a.gz")
    assert not idx.matches(tmp_path / "b")
    assert not idx.matches(tmp_path / "c.gz")
    assert not idx.matches(tmp_path)


def test_idx_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    full = idx_bytes(np.zeros((4, 5, 5), np.uint8), 0x08)
    for name, content in [("raw", full[:-7]), ("gz.gz", gzip.compress(full[:-7])), ("head", full[:9])]:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(DataError, match=f"{name}: truncated"):
            idx.load(p, None)


def test_idx_corrupt_gzip_and_trailing_bytes_are_data_errors(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.zeros((4, 5, 5), np.uint8), 0x08))
    p = tmp_path / "cut.gz"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.gz: corrupt gzip"):
        idx.load(p, None)
    q = tmp_path / "long"
    q.write_bytes(idx_bytes(np.zeros((1, 2, 2), np.uint8), 0x08) + b"xx")
    with pytest.raises(DataError, match="2 bytes follow"):
        idx.load(q, None)


@needs_mnist
def test_idx_labels_file_given_as_images_is_explained() -> None:
    with pytest.raises(DataError, match="labels file, not images"):
        idx.load(MNIST / "t10k-labels-idx1-ubyte.gz", None)


def test_idx_explicit_labels_file_of_any_kind(tmp_path: Path) -> None:
    images = tmp_path / "digits"
    images.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08))
    (tmp_path / "l.npy").write_bytes(npy_bytes(np.array([1, 2, 3])))
    (tmp_path / "l.txt").write_text("1\n2\n3\n")
    (tmp_path / "bad.txt").write_text("1\n2.5\n3\n")
    for name in ("l.npy", "l.txt"):
        assert idx.load(images, tmp_path / name).y.tolist() == [1, 2, 3]  # type: ignore[union-attr]
    with pytest.raises(DataError, match="bad.txt: label 1 is 2.5, not an integer"):
        idx.load(images, tmp_path / "bad.txt")


def test_idx_label_count_mismatch_names_the_labels_file(tmp_path: Path) -> None:
    images = tmp_path / "x-images-idx3-ubyte"
    images.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08))
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2, np.uint8), 0x08))
    with pytest.raises(DataError, match="x-labels-idx1-ubyte: 2 labels for the 3 images"):
        idx.load(images, None)


# --- folder ---------------------------------------------------------------------------------------


def test_folder_grey_images_in_sorted_class_order(tmp_path: Path) -> None:
    a = np.full((4, 5), 10, np.uint8)
    b = np.full((4, 5), 200, np.uint8)
    make_folder(tmp_path, {"dog/1.png": a, "cat/2.png": b, "cat/1.png": a})
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "cat" / ".hidden").write_bytes(b"junk")
    raw = folder.load(tmp_path, None)
    assert raw.layout == "hwc" and raw.x.dtype == np.uint8 and raw.x.shape == (3, 4, 5)
    assert raw.y is not None and raw.y.tolist() == [0, 0, 1]  # cat=0, dog=1
    assert raw.x[1, 0, 0] == 200  # cat/2.png after cat/1.png


def test_folder_integer_names_are_class_numbers_and_colour_wins(tmp_path: Path) -> None:
    grey = np.full((3, 3), 7, np.uint8)
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[..., 2] = 255
    make_folder(tmp_path, {"3/a.png": grey, "10/b.png": rgb})
    raw = folder.load(tmp_path, None)
    assert raw.x.shape == (2, 3, 3, 3)
    assert raw.y is not None and raw.y.tolist() == [3, 10]
    assert raw.x[0].tolist() == np.full((3, 3, 3), 7).tolist()
    assert raw.x[1, 0, 0].tolist() == [0, 0, 255]


def test_folder_non_image_file_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cats/a.png": np.zeros((2, 2), np.uint8)})
    (tmp_path / "cats" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="cats/notes.txt is not an image"):
        folder.load(tmp_path, None)


def test_folder_odd_size_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a/1.png": np.zeros((2, 2), np.uint8), "b/odd.png": np.zeros((3, 2), np.uint8)})
    with pytest.raises(DataError, match=r"b/odd.png is 2x3 pixels but a/1.png is 2x2"):
        folder.load(tmp_path, None)


def test_folder_empty_and_stray_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        folder.load(tmp_path, None)
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        folder.load(tmp_path, None)
    (tmp_path / "README").write_text("hi")
    with pytest.raises(DataError, match="README is a file beside the class folders"):
        folder.load(tmp_path, None)


def test_folder_16_bit_images_are_refused_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((2, 2), 4000, np.uint16)).save(tmp_path / "c" / "deep.png")
    with pytest.raises(DataError, match="c/deep.png is a I;16 image"):
        folder.load(tmp_path, None)


# --- csv ------------------------------------------------------------------------------------------


def test_csv_integer_pixels_give_uint8(tmp_path: Path) -> None:
    p = tmp_path / "d.CSV"
    p.write_text("3,0,128,255\n1,1,2,3\n")
    assert csv.matches(p)
    raw = csv.load(p, None)
    assert raw.layout == "hwc" and raw.x.dtype == np.uint8
    assert raw.x.tolist() == [[0, 128, 255], [1, 2, 3]]
    assert raw.y is not None and raw.y.tolist() == [3, 1]


def test_csv_header_tolerated_and_fractions_give_float32(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("label,p1,p2\n0,0.5,1\n\n2,0,0.25\n")
    raw = csv.load(p, None)
    assert raw.x.dtype == np.float32 and raw.x.tolist() == [[0.5, 1.0], [0.0, 0.25]]
    assert raw.y is not None and raw.y.tolist() == [0, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2,3\n1,2\n", "row 2 has 2 values but row 1 has 3"),
        ("1,2,3\n1,x,3\n", r"row 2, column 2: 'x' is not a number"),
        ("a,b\nc,d\n", r"row 2, column 1: 'c' is not a number"),
        ("", "no rows"),
        ("label,p1\n", "no rows"),
        ("1\n2\n", "no pixel values"),
        ("1.5,2,3\n", "not an integer"),
    ],
    ids=["ragged", "cell", "second-header", "empty", "header-only", "label-only", "fractional-label"],
)
def test_csv_errors_name_the_row(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "d.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        csv.load(p, None)


def test_csv_binary_file_is_a_data_error(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not a text file"):
        csv.load(p, None)


# --- fitted to a model by the core --------------------------------------------------------------


@needs_mnist
def test_idx_fits_an_nchw_model() -> None:
    geometry = geometry_for((None, 1, 28, 28), "nchw", None)
    raw = idx.load(MNIST_IMAGES, None)
    data = fit_to_model(raw, geometry, (0.0, 1.0), MNIST_IMAGES.name)
    assert data.x.shape == (10000, 784, 1)
    model_input = geometry.to_model(data.x[:2])
    assert model_input.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(model_input[1, 0], raw.x[1] / 255.0, atol=1e-6)
    assert data.y is not None and data.y[0] == 7


def test_csv_rgb_fits_an_nhwc_model(tmp_path: Path) -> None:
    h, w = 2, 3
    img = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 10
    p = tmp_path / "rgb.csv"
    p.write_text("\n".join(f"{label}," + ",".join(map(str, (img + label).ravel())) for label in (4, 5)) + "\n")
    geometry = geometry_for((None, h, w, 3), "nhwc", None)
    data = fit_to_model(csv.load(p, None), geometry, (0.0, 255.0), p.name)
    assert data.x.shape == (2, h * w, 3)
    np.testing.assert_allclose(geometry.to_model(data.x)[1], img + 5, atol=1e-4)
    assert data.y is not None and data.y.tolist() == [4, 5]


# --- fuzzing: nothing but DataError escapes ---------------------------------------------------------

SEEDS = {
    "npz": npz_bytes(x=np.arange(12, dtype=np.uint8).reshape(3, 4), y=np.arange(3)),
    "idx": idx_bytes(np.arange(18, dtype=np.uint8).reshape(2, 3, 3), 0x08),
    "idx.gz": gzip.compress(idx_bytes(np.arange(18, dtype=np.int16).reshape(2, 3, 3), 0x0B)),
    "csv": b"label,a,b\n1,2,3\n4,5,6\n",
    "png": png_bytes(np.arange(16, dtype=np.uint8).reshape(4, 4)),
    "npy": npy_bytes(np.arange(3)),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid file cut short, with some bytes overwritten: gets past the magic numbers."""
    data = bytearray(seed[: draw(st.integers(0, len(seed)))])
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data) + draw(st.binary(max_size=8))


def fuzz_bytes(seed: str) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=200) | mutated(SEEDS[seed])


def only_data_errors(fmt: object, path: Path, labels: Path | None = None) -> None:
    fmt.matches(path)  # type: ignore[attr-defined]  # sniffing must never raise on junk
    try:
        fmt.load(path, labels)  # type: ignore[attr-defined]
    except DataError as exc:
        assert "\n" not in str(exc)


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(content=fuzz_bytes("npz"))
def test_fuzz_npz(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.npz"
        p.write_bytes(content)
        only_data_errors(npz, p)


LABEL_SEEDS = {".npy": SEEDS["npy"], ".txt": b"1\n2\n3\n", ".gz": gzip.compress(idx_bytes(np.arange(3, dtype=np.uint8), 0x08))}


@FUZZ
@given(suffix=st.sampled_from(sorted(LABEL_SEEDS)), data=st.data())
def test_fuzz_explicit_labels_file(suffix: str, data: st.DataObject) -> None:
    content = data.draw(st.binary(max_size=100) | mutated(LABEL_SEEDS[suffix]))
    with tempfile.TemporaryDirectory() as d:
        p, lab = Path(d) / "f.npz", Path(d) / f"labels{suffix}"
        p.write_bytes(SEEDS["npz"])
        lab.write_bytes(content)
        only_data_errors(npz, p, lab)


@FUZZ
@given(content=fuzz_bytes("idx") | fuzz_bytes("idx.gz"), labels=fuzz_bytes("idx"))
def test_fuzz_idx(content: bytes, labels: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f-images-idx3-ubyte.gz"
        p.write_bytes(content)
        (Path(d) / "f-labels-idx1-ubyte.gz").write_bytes(labels)
        only_data_errors(idx, p)


@FUZZ
@given(content=fuzz_bytes("csv"))
def test_fuzz_csv(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.csv"
        p.write_bytes(content)
        only_data_errors(csv, p)


@FUZZ
@given(content=fuzz_bytes("png"))
def test_fuzz_folder(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "cls").mkdir()
        (Path(d) / "cls" / "f.png").write_bytes(content)
        only_data_errors(folder, Path(d))
