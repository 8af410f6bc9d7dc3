"""MNIST IDX files, raw or gzipped, recognised by their magic number rather than their name."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from l0tre_core import RawData
from l0tre_formats._common import as_labels, data_error, read_labels, reason

GZIP_MAGIC = b"\x1f\x8b"
# The third byte of the magic number; multi-byte types are stored big-endian.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# What a corrupt gzip stream raises (BadGzipFile is an OSError).
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else path.open("rb")  # type: ignore[return-value]


def _magic(head: bytes) -> tuple[np.dtype, int] | None:
    """dtype and number of dimensions from the first four bytes, or None if not IDX."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES or head[3] == 0:
        return None
    return IDX_DTYPES[head[2]], head[3]


def is_idx(path: Path) -> bool:
    """Whether ``path`` starts with an IDX magic number (through gzip when gzipped)."""
    if not path.is_file():
        return False
    try:
        with _open(path) as f:
            head = f.read(4)
    except _GZIP_ERRORS:
        return False
    return _magic(head) is not None


def read_idx(path: Path) -> np.ndarray:
    """The whole array of one IDX file, in native byte order."""
    try:
        with _open(path) as f:
            data = f.read()
    except _GZIP_ERRORS as exc:
        raise data_error(path, f"corrupt gzip stream: {reason(exc)}") from None
    except OSError as exc:
        raise data_error(path, f"cannot read: {exc.strerror or reason(exc)}") from None
    found = _magic(data[:4])
    if found is None:
        raise data_error(path, "not an IDX file (bad magic number)")
    dtype, ndim = found
    start = 4 + 4 * ndim
    if len(data) < start:
        raise data_error(path, f"truncated: the header of {ndim} dimensions needs {start} bytes, the file holds {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(data) - start
    if have < need:
        raise data_error(path, f"truncated: the header promises {need} bytes of data {list(dims)}, the file holds {have}")
    if have > need:
        # Trailing bytes mean the header and the data disagree, so neither can be trusted.
        raise data_error(path, f"{have - need} bytes follow the {list(dims)} array its header describes")
    return np.frombuffer(data, dtype, count, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def labels_beside(images: Path) -> Path | None:
    """The labels file that MNIST's naming convention puts next to ``images``, if it is there."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1").replace("idx4", "idx1")
    candidate = images.with_name(name)
    return candidate if name != images.name and candidate.is_file() else None


class IdxFormat:
    name = "idx"
    description = "MNIST IDX images (gzipped or raw); labels found beside by MNIST's file names"

    def matches(self, path: Path) -> bool:
        return is_idx(path)

    def load(self, path: Path, labels: Path | None) -> RawData:
        x = read_idx(path)
        if x.ndim == 1:
            raise data_error(path, "an IDX labels file, not images (give the images file; labels are found beside it)")
        if x.ndim > 4:
            raise data_error(path, f"IDX images of {x.ndim} dimensions; expected [N,H,W] or [N,H,W,C]")
        if labels is None:
            labels = labels_beside(path)
            if labels is None:
                return RawData(x, None, "hwc")
            # Found by its name alone, so it must be IDX too; a text fallback would mislead.
            y = as_labels(read_idx(labels), labels)
        else:
            y = read_labels(labels)
        if len(y) != len(x):
            raise data_error(labels, f"{len(y)} labels for the {len(x)} images of {path.name}")
        return RawData(x, y, "hwc")
