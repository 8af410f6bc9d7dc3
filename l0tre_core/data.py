"""Data sets: read through a format plugin, fitted to a model's geometry, in data space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l0tre_core.errors import CardError, DataError, UsageError
from l0tre_core.geometry import Geometry, geometry_for
from l0tre_core.contracts import RawData


@dataclass
class Dataset:
    """Samples in canonical data space ``[N, P, C]`` with their labels and file positions."""

    x: np.ndarray
    y: np.ndarray | None
    index: np.ndarray
    source: str
    sample_shape: tuple[int, ...]  # per-sample shape as stored in the file
    layout: str  # how the file stores a sample: "hwc" or "model"

    def __len__(self) -> int:
        return len(self.x)

    def to_file_layout(self, xc: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Canonical samples back to the per-sample shape of the data file (for witnesses)."""
        n = xc.shape[0]
        if self.layout == "model":
            return geometry.to_model(xc).reshape((n, *self.sample_shape))
        return xc.reshape((n, *self.sample_shape))


def find_format(path: Path, formats: dict[str, Any], name: str | None = None) -> Any:
    if name is not None:
        if name not in formats:
            raise UsageError(f"unknown data format {name!r} (known: {', '.join(sorted(formats))})")
        return formats[name]
    for fmt in formats.values():
        try:
            if fmt.matches(path):
                return fmt
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    raise DataError(
        f"no data format recognises {path}",
        hint=f"known formats: {', '.join(sorted(formats))}; use .npz, MNIST IDX, a CSV or a folder of class folders",
    )


def _reading(stored: str, per_sample: tuple[int, ...], geometry: Geometry) -> str | None:
    """How samples of shape ``per_sample`` fit ``geometry``: ``"model"`` (in the model's own input
    layout), ``"hwc"`` (images, height, width then channels) or None (they do not fit).

    ``stored`` is the format's claim (``"hwc"``, or ``"as-is"`` to match against the model).
    Samples in exactly the model's per-sample shape are read in the model's layout.
    """
    p, c = geometry.n_pixels, geometry.n_channels
    size = int(np.prod(per_sample))
    if stored == "hwc":
        return "hwc" if size == p * c and not (len(per_sample) == 3 and per_sample[2] != c) else None
    if per_sample == geometry.sample_shape:
        return "model"
    if geometry.image_shape and per_sample in ((*geometry.image_shape, c), geometry.image_shape if c == 1 else ()):
        return "hwc"
    if size == p * c and geometry.layout == "flat":
        return "hwc"
    return None


def _canonical(x: np.ndarray, geometry: Geometry, reading: str) -> np.ndarray:
    if reading == "model":
        return geometry.from_model(x)
    return x.reshape(len(x), geometry.n_pixels, geometry.n_channels)


def _describe(geometry: Geometry, reading: str) -> str:
    h, w = geometry.image_shape or (geometry.n_pixels, 1)
    c = geometry.n_channels
    axes = "C,H,W" if reading == "model" and geometry.layout == "nchw" else "H,W,C"
    moved = ", transposed to the model's C,H,W" if reading == "hwc" and geometry.layout == "nchw" else ""
    return f"`layout` {geometry.layout} reads a sample as {axes} ({h}x{w} pixels of {c} channel{'' if c == 1 else 's'}{moved})"


def check_unambiguous(stored: str, per_sample: tuple[int, ...], geometry: Geometry, source: str) -> None:
    """Refuse data that fit a model whose layout was only guessed in more than one way (a
    UsageError about ``layout``): the readings group different numbers into pixels, or feed
    the model different tensors, so the bounds would depend on a silent choice."""
    if not geometry.alternatives:
        return
    readings: list[tuple[Geometry, str]] = []
    for layout in (geometry.layout, *geometry.alternatives):
        try:
            g = geometry if layout == geometry.layout else geometry_for(("N", *geometry.sample_shape), layout, None)
        except CardError:
            continue
        how = _reading(stored, per_sample, g)
        if how is not None:
            readings.append((g, how))
    probe = np.arange(int(np.prod(per_sample)), dtype=np.float64).reshape(1, *per_sample)
    distinct: dict[tuple[bytes, bytes], tuple[Geometry, str]] = {}
    for g, how in readings:
        key = (g.to_model(_canonical(probe, g, how)).tobytes(), g.pixel_ids().tobytes())
        distinct.setdefault(key, (g, how))
    chosen = [g.layout for g, _ in distinct.values()]
    if len(distinct) < 2 and chosen[:1] in ([], [geometry.layout]):
        return
    shape = "[" + ", ".join(["N", *(str(d) for d in geometry.sample_shape)]) + "]"
    ways = "; or ".join(_describe(g, how) for g, how in distinct.values())
    names = " or ".join(f"`layout` {layout}" for layout in chosen)
    if len(distinct) > 1:
        problem = f"fit the model input {shape} in more than one layout and the model does not say which"
    else:
        problem = f"fit the model input {shape} only in a layout other than the one guessed ({geometry.layout})"
    raise UsageError(
        f"{source}: samples of shape {list(per_sample)} {problem} (its layout was only inferred from the input "
        f"shape): {ways}; " + (f"the bounds differ between them, so give {names}" if len(distinct) > 1 else f"give {names} to read them so"),
        hint="or set the layout in the model card: a <model>.l0tre.json sidecar or l0tre.layout metadata",
        field="layout",
    )


def fit_to_model(raw: RawData, geometry: Geometry, value_range: tuple[float, float], source: str) -> Dataset:
    """Reshape stored samples to canonical form and scale uint8 data to the valid range."""
    x = raw.x
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{source} holds no samples")
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{source} holds {x.dtype} values, not numbers")
    per_sample = tuple(int(d) for d in x.shape[1:])
    c = geometry.n_channels
    lo, hi = value_range
    check_unambiguous(raw.layout, per_sample, geometry, source)
    if x.dtype == np.uint8:
        xf = lo + x.astype(np.float32) / 255.0 * (hi - lo)
    else:
        xf = x.astype(np.float32)
    n = len(xf)
    layout = _reading(raw.layout, per_sample, geometry)
    if layout is None and raw.layout == "hwc":
        raise DataError(
            f"{source}: samples of shape {list(per_sample)} do not fit the model "
            f"({geometry.image_shape and list(geometry.image_shape)} pixels x {c} channel{'' if c == 1 else 's'}, layout {geometry.layout})"
        )
    if layout is None:
        raise DataError(
            f"{source}: samples of shape {list(per_sample)} do not fit the model input {list(geometry.sample_shape)} "
            f"(layout {geometry.layout})"
        )
    xc = _canonical(xf, geometry, layout)
    if not np.all(np.isfinite(xc)):
        bad = int(np.argmax(~np.isfinite(xc).reshape(n, -1).all(axis=1)))
        raise DataError(f"{source}: sample {bad} holds NaN or infinite values")
    tol = 1e-5 * (hi - lo)
    if xc.min() < lo - tol or xc.max() > hi + tol:
        raise DataError(
            f"{source}: values span [{xc.min():.4g}, {xc.max():.4g}], outside the valid range [{lo:g}, {hi:g}]",
            hint="set `range` to the data's range, or give `mean`/`std` if the data are already normalised",
            field="range",
        )
    xc = np.clip(xc, lo, hi).astype(np.float32)
    y = None
    if raw.y is not None:
        y = np.asarray(raw.y)
        if y.shape != (n,):
            raise DataError(f"{source}: {y.size} labels for {n} samples")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            else:
                raise DataError(f"{source}: labels must be integers")
        y = y.astype(np.int64)
    return Dataset(xc, y, np.arange(n), source, per_sample, layout)


def select(data: Dataset, n: int | None, start: int) -> Dataset:
    """Samples ``start .. start+n`` (all from ``start`` when ``n`` is None)."""
    if start < 0:
        raise UsageError(f"`start` must be >= 0, got {start}", field="start")
    if n is not None and n < 1:
        raise UsageError(f"`n` must be positive, got {n}", field="n")
    if start >= len(data):
        raise UsageError(f"`start` {start} is past the end of the data ({len(data)} samples)", field="start")
    stop = len(data) if n is None else start + n
    if stop > len(data):
        raise UsageError(f"`n` {n} from `start` {start} asks for more samples than the data holds ({len(data)})", field="n")
    sl = slice(start, stop)
    return Dataset(
        data.x[sl], None if data.y is None else data.y[sl], data.index[sl], data.source, data.sample_shape, data.layout
    )


def check_labels(data: Dataset, n_classes: int) -> None:
    if data.y is not None and len(data.y) and (data.y.min() < 0 or data.y.max() >= n_classes):
        bad = int(data.y[(data.y < 0) | (data.y >= n_classes)][0])
        raise DataError(f"{data.source}: label {bad} is outside the model's {n_classes} classes")


def load_data(
    path: str | Path | None,
    geometry: Geometry,
    value_range: tuple[float, float],
    *,
    host: Any = None,
    labels: str | Path | None = None,
    n: int | None = None,
    start: int = 0,
    fmt: str | None = None,
    n_classes: int | None = None,
) -> Dataset:
    """Read ``path`` (the embedded demo data when None) and fit it to ``geometry``."""
    from l0tre_core.demo import demo_data_path
    from l0tre_core.host import create_host

    host = host or create_host()
    p = Path(path) if path is not None else demo_data_path()
    if not p.exists():
        raise DataError(f"data not found: {p}")
    lab = Path(labels) if labels is not None else None
    if lab is not None and not lab.is_file():
        raise DataError(f"labels file not found: {lab}")
    reader = find_format(p, host.registry("data_formats"), fmt)
    raw = reader.load(p, lab)
    data = select(fit_to_model(raw, geometry, value_range, p.name), n, start)
    if n_classes is not None:
        check_labels(data, n_classes)
    return data
