"""Pixels: which scalars of a model input belong together.

The engine works on *canonical* arrays ``[N, P, C]`` in data space: P pixels (spatial locations),
C channels each. A model card's layout says how a canonical array becomes the model's input
tensor. Keeping the engine in canonical form makes it layout-agnostic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from l0tre_core.errors import CardError


@dataclass(frozen=True)
class Geometry:
    """Shape facts of one model input, without the batch dimension."""

    layout: str  # nchw | nhwc | flat
    sample_shape: tuple[int, ...]  # the model's per-sample input shape
    n_pixels: int
    n_channels: int
    image_shape: tuple[int, int] | None  # (H, W) where known
    # other layouts the declared input shape reads equally well in, where the card's layout was only
    # inferred from that shape (data that fit more than one of them are refused as ambiguous)
    alternatives: tuple[str, ...] = field(default=(), compare=False)

    @property
    def n_features(self) -> int:
        return self.n_pixels * self.n_channels

    def to_model(self, xc: Any) -> Any:
        """Canonical ``[N, P, C]`` to the model's layout ``[N, *sample_shape]`` (NumPy or CuPy)."""
        n = xc.shape[0]
        if self.layout == "nchw":
            h, w = self.image_shape  # type: ignore[misc]
            return xc.reshape(n, h, w, self.n_channels).transpose(0, 3, 1, 2).reshape((n, *self.sample_shape))
        return xc.reshape((n, *self.sample_shape))

    def from_model(self, xm: Any) -> Any:
        """The model's layout back to canonical ``[N, P, C]``."""
        n = xm.shape[0]
        if self.layout == "nchw":
            c, h, w = self.sample_shape
            return xm.reshape(n, c, h, w).transpose(0, 2, 3, 1).reshape(n, h * w, c)
        return xm.reshape(n, self.n_pixels, self.n_channels)

    def pixel_ids(self) -> np.ndarray:
        """For each scalar of the flattened model input, the pixel it belongs to."""
        ids = np.repeat(np.arange(self.n_pixels), self.n_channels).reshape(1, self.n_pixels, self.n_channels)
        return self.to_model(ids).reshape(-1)

    def channel_ids(self) -> np.ndarray:
        """For each scalar of the flattened model input, its channel."""
        ids = np.tile(np.arange(self.n_channels), self.n_pixels).reshape(1, self.n_pixels, self.n_channels)
        return self.to_model(ids).reshape(-1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "sample_shape": list(self.sample_shape),
            "pixels": self.n_pixels,
            "channels": self.n_channels,
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }


def infer_layout(shape: Sequence[Any]) -> str | None:
    """A guess from a declared input shape (batch included), or None when nothing fits."""
    dims = list(shape)[1:]
    if len(dims) == 3:
        first, last = dims[0], dims[-1]
        small = (1, 3, 4)
        if first in small and last not in small:
            return "nchw"
        if last in small and first not in small:
            return "nhwc"
        # both ends could be channels: a single channel, then square images, decide
        if last == 1 and first != 1:
            return "nhwc"
        if first == 1 and last != 1:
            return "nchw"
        if dims[0] == dims[1] and dims[1] != dims[2]:
            return "nhwc"
        return "nchw" if isinstance(first, int) else None
    if len(dims) in (1, 2):
        return "flat"
    return None


def ambiguous_layouts(shape: Sequence[Any]) -> tuple[str, ...]:
    """The layouts a declared input shape (batch included) reads equally well in: more than one
    only where ``infer_layout`` has nothing to go on but the ONNX convention.

    Both ends of ``[N, a, b, c]`` look like channels (3 or 4; a single channel decides for
    itself) and square images do not pick one (both readings give them, or neither does):
    ``[N, 3, 3, 3]``, ``[N, 4, 4, 4]``, ``[N, 3, 32, 3]``. ``[N, 3, 4, 4]`` (square only as NCHW)
    and ``[N, 4, 4, 3]`` (only as NHWC) are decided.
    """
    dims = list(shape)[1:]
    if len(dims) == 3 and all(isinstance(d, int) for d in dims):
        first, mid, last = dims
        if first in (3, 4) and last in (3, 4) and (mid == last) == (first == mid):
            return ("nchw", "nhwc")
    layout = infer_layout(shape)
    return (layout,) if layout is not None else ()


def geometry_for(shape: Sequence[Any], layout: str, channels: int | None) -> Geometry:
    """The geometry of a model input with declared ``shape`` (batch first) under ``layout``."""
    dims = list(shape)[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise CardError(
            f"the model input has non-fixed dimensions {list(shape)}; only the batch dimension may vary"
        )
    if layout in ("nchw", "nhwc"):
        if len(dims) != 3:
            raise CardError(f"layout {layout} needs a 4-D input [N,C,H,W] or [N,H,W,C], the model takes {list(shape)}")
        c, h, w = dims if layout == "nchw" else (dims[2], dims[0], dims[1])
        if channels is not None and channels != c:
            raise CardError(f"the card says {channels} channel{'' if channels == 1 else 's'} but the {layout} input has {c}")
        return Geometry(layout, tuple(dims), h * w, c, (h, w))
    if layout == "flat":
        if len(dims) == 2 and dims[1] != 1:
            raise CardError(f"layout flat needs an input [N,D] or [N,D,1], the model takes {list(shape)}")
        if len(dims) not in (1, 2):
            raise CardError(f"layout flat needs an input [N,D] or [N,D,1], the model takes {list(shape)}")
        d = dims[0]
        c = channels or 1
        if d % c:
            raise CardError(f"a flat input of {d} values cannot hold pixels of {c} channel{'' if c == 1 else 's'}")
        p = d // c
        side = math.isqrt(p)
        return Geometry("flat", tuple(dims), p, c, (side, side) if side * side == p else None)
    raise CardError(f"unknown layout {layout!r}")
