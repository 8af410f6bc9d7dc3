"""CSV rows ``label,p1,p2,...`` with pixel values in H,W,C order, as VNN-COMP and ERAN ship them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l0tre_core import RawData
from l0tre_formats._common import as_labels, data_error, read_labels, reason


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _explain(path: Path, lines: list[str], first: int) -> None:
    """Find the row np.loadtxt choked on and raise a DataError that names it (rows count from 1)."""
    width, width_row = 0, 0
    for row, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        cells = line.split(",")
        if not width:
            width, width_row = len(cells), row
        elif len(cells) != width:
            raise data_error(path, f"row {row} has {len(cells)} values but row {width_row} has {width}")
        for col, cell in enumerate(cells, start=1):
            if not _is_number(cell):
                raise data_error(path, f"row {row}, column {col}: {cell.strip()[:20]!r} is not a number")


class CsvFormat:
    name = "csv"
    description = "CSV rows label,p1,p2,... with 0-255 pixel values in H,W,C order (VNN-COMP/ERAN style)"

    def matches(self, path: Path) -> bool:
        return path.suffix.lower() == ".csv" and not path.is_dir()

    def load(self, path: Path, labels: Path | None) -> RawData:
        try:
            lines = path.read_bytes().decode("utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise data_error(path, "not a text file (not UTF-8)") from None
        except OSError as exc:
            raise data_error(path, f"cannot read: {exc.strerror or reason(exc)}") from None
        first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
        if first < len(lines) and not all(_is_number(c) for c in lines[first].split(",")):
            first += 1  # one header line is tolerated, a second non-numeric row is not
        if not any(line.strip() for line in lines[first:]):
            raise data_error(path, "no rows of data")
        try:
            table = np.loadtxt(lines[first:], delimiter=",", dtype=np.float64, ndmin=2, comments=None)
        except ValueError as exc:
            _explain(path, lines, first)
            raise data_error(path, f"cannot read CSV: {reason(exc)}") from None
        if table.shape[1] < 2:
            raise data_error(path, "rows hold a label but no pixel values (expected label,p1,p2,...)")
        y = read_labels(labels) if labels is not None else as_labels(table[:, 0], path)
        pixels = table[:, 1:]
        whole = np.isfinite(pixels).all() and (pixels == np.round(pixels)).all()
        if whole and pixels.min() >= 0 and pixels.max() <= 255:
            x = pixels.astype(np.uint8)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are reported by the core
                x = pixels.astype(np.float32)
        return RawData(x, y, "hwc")
