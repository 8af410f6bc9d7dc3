"""NumPy ``.npz`` archives holding ``x`` (samples) and optionally ``y`` (labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l0tre_core import RawData
from l0tre_formats._common import NUMPY_READ_ERRORS, as_labels, data_error, read_labels, reason


class NpzFormat:
    name = "npz"
    description = "NumPy .npz with arrays x (samples, any shape) and y (labels, optional)"

    def matches(self, path: Path) -> bool:
        return path.suffix.lower() == ".npz" and not path.is_dir()

    def load(self, path: Path, labels: Path | None) -> RawData:
        try:
            # Our own handle: np.load leaks its file when a broken zip fails to open.
            with path.open("rb") as f:
                # Files come from strangers: never unpickle (an object array becomes a DataError).
                archive = np.load(f, allow_pickle=False)
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise data_error(path, "holds a single .npy array, not an .npz archive with arrays x and y")
                names = list(archive.files)
                if "x" not in names:
                    present = ", ".join(names) if names else "none"
                    raise data_error(path, f"no array named x (arrays present: {present}); save with np.savez(path, x=..., y=...)")
                x = archive["x"]
                y = archive["y"] if "y" in names and labels is None else None
        except NUMPY_READ_ERRORS as exc:
            raise data_error(path, f"cannot read .npz: {reason(exc)}") from None
        if labels is not None:
            y = read_labels(labels)
        elif y is not None:
            y = as_labels(y, f"{path} (array y)")
        return RawData(x, y, "as-is")
