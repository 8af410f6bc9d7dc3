"""The device-side tensor build on a GPU, against the NumPy host path, side by side in one run.

    python benchmarks/gpu_build.py [--model MODEL] [--seconds 5]

Prints, first, perturbation batches built per second by the kernels alone (``perturb`` into the
reused buffer, as the search calls it: 4,096 rows, t changed pixels per row, the device
synchronised after each) for the NumPy and the CuPy kernels; then evaluations per second of t = 2
sweep steps (chunks of 4,096) for: NumPy kernels on the CPU session; NumPy kernels with the CUDA
session (a host round trip per call); CuPy kernels with the CUDA session through IOBinding and
reduction on the device. The session rows need onnxruntime-gpu and are reported as skipped
without it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from l0tre_core import load_data, load_model
from l0tre_core.errors import L0treError
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel
from l0tre_cupy import CupyKernels


def rate(clf, kernels, x, ref, seconds: float) -> float:
    threat = ThreatModel(lo=clf.card.lo, hi=clf.card.hi)
    ctx = SearchContext(clf, kernels, threat, x, ref, 4096)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += ctx.sweep(2, deadline=-1.0).evaluated  # one chunk per call
    return n / (time.perf_counter() - start)


def build_rate(kernels, width: int, per_row: int, seconds: float, sync) -> float:
    """Rows per second of ``perturb`` into a reused buffer (host index arrays, as the search has)."""
    rng = np.random.default_rng(0)
    rows = 4096
    base = kernels.asarray(rng.random(width, dtype=np.float32))
    batches = [(np.stack([rng.choice(width, per_row, replace=False) for _ in range(rows)]),
                rng.random((rows, per_row), dtype=np.float32)) for _ in range(8)]
    buf, dirty = None, None
    n, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pos, val = batches[i % len(batches)]
        pos_dev = kernels.asarray(pos)
        buf = kernels.perturb(base, pos_dev, kernels.asarray(val), buf, dirty)
        dirty = pos_dev
        sync()
        n, i = n + rows, i + 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    cupy_kernels = CupyKernels()
    if not cupy_kernels.usable():
        raise SystemExit("no usable CUDA GPU with CuPy here")
    import cupy

    sync = cupy.cuda.get_current_stream().synchronize
    print(f"CuPy {cupy.__version__}, {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    for width, per_row, label in ((784, 2, "28x28x1, t = 2"), (3072, 6, "32x32x3, t = 2 (3 channels)")):
        host = build_rate(NumpyKernels(), width, per_row, args.seconds, lambda: None)
        dev = build_rate(cupy_kernels, width, per_row, args.seconds, sync)
        print(f"build {label}: numpy {host:,.0f} rows/s, cupy {dev:,.0f} rows/s ({dev / host:.1f}x)")
    cpu = load_model(args.model, device="cpu")
    data = load_data(None, cpu.geometry, cpu.card.range, n=1)
    ref = int(cpu.predict(data.x)[0])
    try:
        gpu = load_model(args.model, device="cuda")
    except L0treError as exc:
        gpu = None
        print(f"session rows with the CUDA provider skipped: {exc}")
    rows = [("numpy + CPU session", cpu, NumpyKernels())]
    if gpu is not None:
        rows += [("numpy + CUDA session (host round trip)", gpu, NumpyKernels()),
                 ("cupy + CUDA IOBinding, reduced on device", gpu, cupy_kernels)]
    for label, clf, kernels in rows:
        rate(clf, kernels, data.x[0], ref, 1.0)  # warm-up: kernels compiled, the tuner settles
        print(f"{label}: {rate(clf, kernels, data.x[0], ref, args.seconds):,.0f} evals/s (batch {clf.tuner.chosen})")


if __name__ == "__main__":
    main()
