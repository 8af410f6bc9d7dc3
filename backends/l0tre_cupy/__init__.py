"""CuPy array kernels: perturbation tensors built on the GPU (a plugin like any other).

CuPy is imported only when the kernels are asked whether they are usable, so machines without a
GPU never import it. The NumPy kernels in ``l0tre_core.tensors`` are the reference these are
tested against.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from l0tre_core import hookimpl

__version__ = "0.1.0"

_SCATTER = r"""
extern "C" __global__ void l0tre_scatter(float* out, const long long* pos, const float* val,
                                        long long rows, long long per_row, long long width) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= rows * per_row) return;
    long long row = i / per_row;
    out[row * width + pos[i]] = val[i];
}
"""


class CupyKernels:
    name = "cupy"
    description = "CuPy on a CUDA GPU: broadcast copy plus one scatter kernel"

    def __init__(self) -> None:
        self._usable: bool | None = None
        self._kernel: Any = None

    def usable(self) -> bool:
        if self._usable is None:
            try:
                import cupy

                self._usable = bool(cupy.is_available())
            except Exception:  # not installed, or installed without a driver: not usable here
                self._usable = False
        return self._usable

    def _scatter(self) -> Any:
        if self._kernel is None:
            import cupy

            self._kernel = cupy.RawKernel(_SCATTER, "l0tre_scatter")
        return self._kernel

    device_outputs = True  # the search keeps model outputs on the GPU and reduces them here

    def reduce(self, outputs: Any, ref: int, kind: str, probs: bool) -> tuple[np.ndarray, np.ndarray]:
        """As ``NumpyKernels.reduce`` (the same arithmetic, in the same order; CUDA's ``logf`` of
        probabilities may differ from the host's by an ulp), on the GPU: only the ``[B]`` scores
        and flags cross to the host."""
        import cupy

        out = cupy.asarray(outputs)
        s = cupy.log(cupy.clip(out, 1e-30, None)) if probs else out
        if kind == "logit":
            sc = s[:, ref].astype(cupy.float64)
        else:
            others = cupy.concatenate([s[:, :ref], s[:, ref + 1 :]], axis=1)
            sc = (s[:, ref] - others.max(axis=1)).astype(cupy.float64)
        flipped = (cupy.argmax(out, axis=1) != ref) & cupy.all(cupy.isfinite(out), axis=1)
        return cupy.asnumpy(sc), cupy.asnumpy(flipped)

    def asarray(self, x: np.ndarray) -> Any:
        import cupy

        return cupy.asarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        import cupy

        return cupy.asnumpy(x)

    def perturb(self, base: Any, positions: Any, values: Any, out: Any = None, dirty: Any = None) -> Any:
        """As ``NumpyKernels.perturb``: restores only the ``dirty`` positions of a reused buffer."""
        import cupy

        base = cupy.asarray(base, dtype=cupy.float32)
        positions = cupy.ascontiguousarray(cupy.asarray(positions, dtype=cupy.int64))
        values = cupy.ascontiguousarray(cupy.asarray(values, dtype=cupy.float32))
        rows = positions.shape[0]
        width = base.shape[0]
        if out is None or out.shape[0] < rows or dirty is None:
            out = cupy.empty((rows, width), cupy.float32) if out is None or out.shape[0] < rows else out
            out[...] = base
        else:
            dirty = cupy.ascontiguousarray(cupy.asarray(dirty, dtype=cupy.int64))
            self._launch(out, dirty, base[dirty])
        out = out[:rows]
        self._launch(out, positions, values)
        return out

    def _launch(self, out: Any, positions: Any, values: Any) -> None:
        import cupy

        rows, per_row = positions.shape
        total = rows * per_row
        if total:
            threads = 256
            values = cupy.ascontiguousarray(values, dtype=cupy.float32)
            self._scatter()(((total + threads - 1) // threads,), (threads,),
                            (out, positions, values, np.int64(rows), np.int64(per_row), np.int64(out.shape[1])))


@hookimpl
def l0tre_register_array_kernels(register: Callable[[Any], None]) -> None:
    register(CupyKernels())
