"""The ONNX Runtime inference backend (a plugin like any other).

``onnxruntime`` is imported only when a model is loaded, so ``l0tre --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from l0tre_core import BackendOptions, InferenceBackend, Runtime, hookimpl

__version__ = "0.1.0"


class OnnxRuntimeBackend:
    name = "onnxruntime"
    description = "ONNX Runtime: CUDA provider where usable, CPU otherwise"

    def load(self, path: Path, options: BackendOptions) -> Runtime:
        from l0tre_onnxruntime.session import load_runtime

        return load_runtime(path, options)


@hookimpl
def l0tre_register_backends(register: Callable[[InferenceBackend], None]) -> None:
    register(OnnxRuntimeBackend())
