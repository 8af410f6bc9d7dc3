"""The report's pictures: witnesses (clean, adversarial, changed pixels) and saliency overlays, as
PNG data URIs (the page needs no other file).

Result folders hold the adversarial images (``witnesses.npz``, ``adversarial.npz``, ``tests.npz``)
and saliency maps (``saliency.npz``), not the clean inputs. The clean inputs are read again from the
data the run used: ``--data`` when given, else the demo data for a run of the demo, else a file of
the recorded name beside the folder; when none is found the adversarial images are shown alone.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from l0tre_core import L0treError, load_data, load_model

TARGET_PX = 112  # an image's shorter side on the page, at least (small inputs are scaled up, nearest)
CHANGED = (230, 30, 60)  # the colour of changed pixels


def png_data_uri(rgb: np.ndarray) -> str:
    """``rgb`` ([H, W, 3] uint8) as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_data_uri(path: Path) -> str | None:
    """A PNG file beside the results as a data URI, or None when it is missing."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_geometry(model: dict[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) of the model's images from the result's ``model.geometry``; a flat input is one row."""
    geo = model.get("geometry") or {}
    pixels, channels = int(geo.get("pixels") or 0), int(geo.get("channels") or 1)
    shape = geo.get("image_shape")
    if shape:
        return int(shape[0]), int(shape[1]), channels
    return 1, pixels, channels


def to_hwc(samples: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """Samples as stored in a result file (the data file's per-sample shape: H,W / H,W,C / C,H,W /
    flat) as ``[N, H, W, C]``."""
    h, w, c = hwc
    n = samples.shape[0]
    per = samples.shape[1:]
    if per == (c, h, w) and c != w:  # channels first (a file in the model's NCHW layout)
        return np.moveaxis(samples, 1, -1).reshape(n, h, w, c)
    return samples.reshape(n, h, w, c)


def to_rgb(img: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """An ``[H, W, C]`` data-space image as ``[H, W, 3]`` uint8 (grey for one channel)."""
    lo, hi = value_range
    g = np.clip((np.asarray(img, np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    if g.shape[-1] == 1:
        g = np.repeat(g, 3, axis=-1)
    elif g.shape[-1] != 3:
        g = np.repeat(g.mean(axis=-1, keepdims=True), 3, axis=-1)
    return (g * 255 + 0.5).astype(np.uint8)


def upscale(rgb: np.ndarray) -> np.ndarray:
    """Nearest-neighbour enlargement so a 28x28 digit is visible (never shrinks)."""
    k = max(1, TARGET_PX // max(1, min(rgb.shape[:2])))
    return rgb.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else rgb


def marked(rgb: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """``rgb`` dimmed, with the ``changed`` pixels ([H, W] bool) in red: where the witness acts."""
    out = (rgb.astype(np.float64) * 0.45 + 40).astype(np.uint8)
    out[changed] = CHANGED
    return out


def saliency_overlay(grey_rgb: np.ndarray | None, smap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The map in ``magma`` (the colours of saliency.png) blended over the input, or alone."""
    from matplotlib import colormaps

    norm = np.clip((np.asarray(smap, np.float64) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colour = colormaps["magma"](norm)[..., :3] * 255
    if grey_rgb is None:
        return colour.astype(np.uint8)
    grey = grey_rgb.astype(np.float64).mean(axis=-1, keepdims=True)
    return (0.65 * colour + 0.35 * grey).astype(np.uint8)


def clean_inputs(doc: dict[str, Any], folder: Path, data: Path | None, indices: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The clean inputs at ``indices`` as ``[N, H, W, C]`` (data space), or None and why not."""
    model_info = doc.get("model") or {}
    source = (doc.get("data") or {}).get("source")
    try:
        demo = load_model(None)
        model_path = model_info.get("path")
        same_model = model_path is not None and Path(model_path).resolve() == Path(demo.path).resolve()
        if data is None:
            candidates = [p for p in (folder / str(source), folder.parent / str(source), Path(str(source))) if source and p.is_file()]
            if candidates:
                data = candidates[0]
            elif not (same_model and source == load_data(None, demo.geometry, demo.card.range, n=1).source):
                return None, f"the clean inputs ({source}) were not found: give --data FILE to show them"
        model = demo if (same_model or model_path is None) else load_model(model_path, card=_card(model_info))
        dataset = load_data(data, model.geometry, model.card.range)
    except L0treError as exc:
        return None, f"the clean inputs could not be read ({exc}); give --data FILE to show them"
    if len(indices) and int(indices.max()) >= len(dataset):
        return None, f"the data read for the clean inputs holds {len(dataset)} inputs, fewer than the run's indices"
    return to_hwc(dataset.x[indices], image_geometry(model_info)), None


def _card(model: dict[str, Any]) -> dict[str, Any]:
    """The card the run resolved, as card flags (so a model without metadata is read as the run read it)."""
    card = model.get("card") or {}

    def text(v: Any) -> str:
        return ",".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else f"{v:g}"

    flags: dict[str, Any] = {}
    if card.get("layout"):
        flags["layout"] = card["layout"]
    for key in ("range", "mean", "std"):
        if card.get(key) is not None:
            flags[key] = text(card[key])
    if card.get("channels") is not None:
        flags["channels"] = int(card["channels"])
    return flags
