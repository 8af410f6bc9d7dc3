"""The model card: how to feed a model, declared rather than guessed silently.

Resolution order, field by field: command-line flags, a sidecar file next to the model
(``MODEL.l0tre.json``), ``l0tre.*`` entries in the ONNX metadata, then inference from the graph.
Every field remembers where its value came from, so reports can say what was inferred.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from l0tre_core.errors import CardError

LAYOUTS = ("nchw", "nhwc", "flat")
OUTPUTS = ("logits", "probs")
SIDECAR_SUFFIX = ".l0tre.json"
CARD_FIELDS = ("layout", "range", "mean", "std", "output", "classes", "channels")


@dataclass(frozen=True)
class ModelCard:
    """How data-space inputs become model inputs, and what the outputs mean."""

    layout: str = "nchw"
    range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str = "logits"
    classes: tuple[str, ...] | None = None
    channels: int | None = None  # channels per pixel of a flat input (default 1)
    description: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def lo(self) -> float:
        return self.range[0]

    @property
    def hi(self) -> float:
        return self.range[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "range": list(self.range),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "output": self.output,
            "classes": list(self.classes) if self.classes is not None else None,
            "channels": self.channels,
            "description": self.description,
            "sources": dict(self.sources),
        }


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, (int, float)):
        parts = [value]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise CardError(f"card field {name!r} must be numbers, got {value!r}")
    try:
        out = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise CardError(f"card field {name!r} must be comma-separated numbers, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise CardError(f"card field {name!r} must be finite numbers, got {value!r}")
    return out


def normalise_field(name: str, value: Any) -> Any:
    """Check and convert one card value given as a flag, sidecar or metadata entry."""
    if name == "layout":
        v = str(value).lower()
        if v not in LAYOUTS:
            raise CardError(f"layout must be one of {', '.join(LAYOUTS)}, got {value!r}")
        return v
    if name == "output":
        v = str(value).lower()
        if v in ("prob", "probabilities", "softmax"):
            v = "probs"
        if v not in OUTPUTS:
            raise CardError(f"output must be one of {', '.join(OUTPUTS)}, got {value!r}")
        return v
    if name == "range":
        r = _floats(value, "range")
        if len(r) != 2 or not r[0] < r[1]:
            raise CardError(f"range must be two numbers lo,hi with lo < hi, got {value!r}")
        return (r[0], r[1])
    if name in ("mean", "std"):
        v = _floats(value, name)
        if name == "std" and any(s == 0 for s in v):
            raise CardError(f"std must not contain zeros, got {value!r}")
        return v
    if name == "classes":
        if isinstance(value, str):
            names = [c.strip() for c in value.split(",")]
        elif isinstance(value, Sequence):
            names = [str(c) for c in value]
        else:
            raise CardError(f"classes must be a comma-separated list, got {value!r}")
        if not names or any(not c for c in names):
            raise CardError(f"classes must be non-empty names, got {value!r}")
        return tuple(names)
    if name == "channels":
        try:
            c = int(value)
        except (TypeError, ValueError):
            raise CardError(f"channels must be a positive integer, got {value!r}") from None
        if c < 1:
            raise CardError(f"channels must be a positive integer, got {value!r}")
        return c
    if name == "description":
        return str(value)
    raise CardError(f"unknown model card field {name!r}; known: {', '.join(CARD_FIELDS)}")


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def read_sidecar(model_path: Path) -> dict[str, Any]:
    """The sidecar card next to the model, or an empty dict when there is none."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"cannot read model card {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"model card {path} must hold a JSON object")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def metadata_fields(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Card fields from ONNX ``metadata_props`` entries named ``l0tre.<field>``."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("l0tre."):
            name = key[len("l0tre."):]
            if name in CARD_FIELDS or name == "description":
                try:
                    out[name] = json.loads(value) if value[:1] in "[{" else value
                except json.JSONDecodeError as exc:
                    raise CardError(f"the model's metadata entry {key!r} is not valid JSON: {exc}") from None
    return out


def resolve_card(
    *,
    flags: Mapping[str, Any],
    sidecar: Mapping[str, Any],
    metadata: Mapping[str, Any],
    inferred: Mapping[str, Any],
) -> ModelCard:
    """Merge the four sources field by field, first one that sets a field wins."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, fields in (("flag", flags), ("sidecar", sidecar), ("metadata", metadata), ("inferred", inferred)):
        for name, value in fields.items():
            if value is None or name in values:
                continue
            values[name] = normalise_field(name, value)
            sources[name] = source
    for name in ("layout", "range", "output"):
        sources.setdefault(name, "default")
    card = ModelCard(**values, sources=sources)
    _check_channels(card)
    return card


def _check_channels(card: ModelCard) -> None:
    if card.mean is not None and card.std is not None and len(card.mean) != len(card.std) and 1 not in (
        len(card.mean),
        len(card.std),
    ):
        raise CardError(
            f"`mean` has {len(card.mean)} values but `std` has {len(card.std)}; give one per channel", field="std"
        )


def with_field(card: ModelCard, name: str, value: Any, source: str) -> ModelCard:
    sources = dict(card.sources)
    sources[name] = source
    return replace(card, **{name: normalise_field(name, value)}, sources=sources)
