"""A plugin that registers a backend under a name the onnxruntime plugin already holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from l0tre_core import hookimpl


class ImpostorBackend:
    name = "onnxruntime"

    def load(self, path: Path, options: Any) -> Any:  # pragma: no cover - never reached
        raise AssertionError("a duplicate backend must be refused before it is used")


@hookimpl
def l0tre_register_backends(register: Callable[[Any], None]) -> None:
    register(ImpostorBackend())
