"""A folder of class folders (``root/<class>/<image>``), the layout torchvision's ImageFolder reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l0tre_core import RawData
from l0tre_formats._common import data_error, reason

# 8-bit modes only: Pillow's convert() clips 16-bit and float images to 0..255 instead of
# scaling them, which would silently corrupt the data.
GREY_MODES = {"1", "L", "LA", "La"}
COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _class_folders(root: Path) -> list[tuple[Path, int]]:
    """Visible sub-folders with their class index; stray files are an error, not ignored."""
    folders = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise data_error(root, f"{entry.name} is a file beside the class folders (expected one sub-folder per class)")
        folders.append(entry)
    names = [f.name for f in folders]
    if names and all(n.isascii() and n.isdigit() for n in names):
        # Folders named 0..9 are the class numbers themselves, even with gaps.
        return sorted(((f, int(f.name)) for f in folders), key=lambda fc: fc[1])
    return [(f, i) for i, f in enumerate(folders)]


def _read_image(file: Path, root: Path, rel: str) -> np.ndarray:
    """One image as uint8 [H,W] (grey modes) or [H,W,3] (colour modes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            mode = im.mode
            if mode in GREY_MODES:
                return np.asarray(im.convert("L"))
            if mode in COLOUR_MODES:
                return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise data_error(root, f"{rel} is not an image") from None
    except Image.DecompressionBombError:
        raise data_error(root, f"{rel} is too large to decode safely") from None
    # Decoders raise a wide and version-dependent set of errors on malformed files; this
    # handler covers only the decoding of one file, so a bug of ours cannot hide behind it.
    except Exception as exc:  # noqa: BLE001
        raise data_error(root, f"{rel} cannot be decoded: {reason(exc)}") from None
    raise data_error(root, f"{rel} is a {mode} image; only 8-bit grey or colour images are supported")


class FolderFormat:
    name = "folder"
    description = "a folder with one sub-folder of images per class (class = sorted position, or the folder's number)"

    def matches(self, path: Path) -> bool:
        return path.is_dir()

    def load(self, path: Path, labels: Path | None) -> RawData:
        if labels is not None:
            raise data_error(path, "a folder takes its labels from its class folders; drop `labels`", "labels")
        try:
            classes = _class_folders(path)
            files = [
                (file, label)
                for folder, label in classes
                for file in sorted(folder.iterdir())
                if not file.name.startswith(".")
            ]
        except OSError as exc:
            raise data_error(path, f"cannot list: {exc.strerror or reason(exc)}") from None
        if not classes:
            raise data_error(path, "empty: expected one sub-folder of images per class")
        if not files:
            raise data_error(path, "the class folders hold no images")
        images: list[np.ndarray] = []
        first = ""
        for file, _ in files:
            rel = f"{file.parent.name}/{file.name}"
            if file.is_dir():
                raise data_error(path, f"{rel} is a folder inside a class folder (expected images only)")
            img = _read_image(file, path, rel)
            if images and img.shape[:2] != images[0].shape[:2]:
                h, w = img.shape[:2]
                h0, w0 = images[0].shape[:2]
                raise data_error(path, f"{rel} is {w}x{h} pixels but {first} is {w0}x{h0} (all images must have one size)")
            first = first or rel
            images.append(img)
        if any(img.ndim == 3 for img in images):
            # One colour image makes the whole set colour; grey images become equal R, G, B.
            images = [img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2) for img in images]
        y = np.array([label for _, label in files], dtype=np.int64)
        return RawData(np.stack(images), y, "hwc")
