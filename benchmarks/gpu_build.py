"""The device-side tensor build on a GPU: CuPy kernel + CUDA IOBinding + on-device reduction,
against the NumPy host path, side by side in one run. Needs CuPy and onnxruntime-gpu (not
installable on the project's CPU machines: it has never run there).

    python benchmarks/gpu_build.py [--model MODEL] [--seconds 5]

Prints evaluations per second of t = 2 sweep steps (chunks of 4,096) for: NumPy kernels on the
CPU session; NumPy kernels with the CUDA session (a host round trip per call); CuPy kernels with
the CUDA session through IOBinding and reduction on the device (no host round trip).
"""

from __future__ import annotations

import argparse
import time

from l0tre_core import load_data, load_model
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    cupy_kernels = CupyKernels()
    if not cupy_kernels.usable():
        raise SystemExit("no usable CUDA GPU with CuPy here")
    cpu = load_model(args.model, device="cpu")
    gpu = load_model(args.model, device="cuda")
    data = load_data(None, cpu.geometry, cpu.card.range, n=1)
    ref = int(cpu.predict(data.x)[0])
    for label, clf, kernels in (("numpy + CPU session", cpu, NumpyKernels()),
                                ("numpy + CUDA session (host round trip)", gpu, NumpyKernels()),
                                ("cupy + CUDA IOBinding, reduced on device", gpu, cupy_kernels)):
        rate(clf, kernels, data.x[0], ref, 1.0)  # warm-up: kernels compiled, the tuner settles
        print(f"{label}: {rate(clf, kernels, data.x[0], ref, args.seconds):,.0f} evals/s (batch {clf.tuner.chosen})")


if __name__ == "__main__":
    main()
