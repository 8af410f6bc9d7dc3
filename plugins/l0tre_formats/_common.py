"""What every format shares: one-line errors and reading an explicit labels file."""

from __future__ import annotations

from pathlib import Path

import struct
import tokenize
import zipfile
import zlib

import numpy as np

from l0tre_core import DataError

# What numpy and zipfile raise on malformed .npy/.npz bytes: a bad zip, a bad array header
# (numpy re-tokenises old headers, hence TokenError), an unsupported compression method, an
# encrypted member (RuntimeError), an absurd array shape (MemoryError, OverflowError).
NUMPY_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    SyntaxError,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    NotImplementedError,
    RuntimeError,
    MemoryError,
    OverflowError,
)


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, so a DataError always stays on one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def data_error(path: Path | str, problem: str, field: str | None = None) -> DataError:
    return DataError(f"{path}: {problem}", field=field)


def as_labels(values: np.ndarray, source: Path | str) -> np.ndarray:
    """Labels as int64 ``[N]``; floats are accepted only when they hold whole numbers."""
    y = np.asarray(values)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise data_error(source, f"labels must be one value per sample, found shape {list(y.shape)}")
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        raise data_error(source, f"labels hold {y.dtype} values, not integers")
    # A huge or infinite float would wrap around silently when cast to int64.
    ok = np.isfinite(y) & (np.abs(y) < 2**31)
    ok[ok] = y[ok] == np.round(y[ok])
    if not ok.all():
        bad = int(np.argmin(ok))
        raise data_error(source, f"label {bad} is {float(y[bad]):g}, not an integer")
    return y.astype(np.int64)


def read_labels(path: Path) -> np.ndarray:
    """An explicit labels file: IDX labels, a ``.npy`` array, or text with integers."""
    from l0tre_formats.idxfile import is_idx, read_idx

    try:
        idx = is_idx(path)
    except OSError as exc:
        raise data_error(path, f"cannot read labels: {exc.strerror or reason(exc)}") from None
    if idx:
        return as_labels(read_idx(path), path)
    if path.suffix.lower() == ".npy":
        try:
            # Our own handle: np.load leaks its file when a broken zip fails to open.
            with path.open("rb") as f:
                values = np.load(f, allow_pickle=False)
        except NUMPY_READ_ERRORS as exc:
            raise data_error(path, f"cannot read labels: {reason(exc)}") from None
        if not isinstance(values, np.ndarray):
            raise data_error(path, "a labels .npy file must hold one array")
        return as_labels(values, path)
    try:
        # Read the text ourselves: np.loadtxt would decompress a .gz name behind our back.
        lines = [line for line in path.read_bytes().decode("utf-8-sig").splitlines() if line.strip()]
        if not lines:
            raise data_error(path, "the labels file is empty")
        values = np.loadtxt(lines, delimiter=",", ndmin=1, dtype=np.float64, comments=None)
    except (OSError, ValueError) as exc:
        raise data_error(path, f"cannot read labels as IDX, .npy or text: {reason(exc)}") from None
    return as_labels(values, path)
