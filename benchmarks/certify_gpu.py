"""The boxes' forward pass on the GPU (CuPy) against NumPy, side by side in one run.

    python benchmarks/certify_gpu.py [--limit 60] [--boxes 256]

Part 1, one pass of bounds: ``box_bounds`` over a batch of whole-range boxes (``--boxes``: one
third single pixels, one third pixel pairs, one third blocks of 20 pixels, as the cover makes
them) on each zoo CNN, NumPy then CuPy; seconds per call (median of 3 after a warm-up) and the
largest difference between the two bounds.

Part 2, whole certificates: ``certify`` at t = 2 on held-out MNIST images (t10k 8000+) of the
zoo's ConvSmall and max-pool CNNs, with NumPy and with CuPy; each input's verdict and seconds
(level t = 2 alone, after t = 1 as the engine runs it), and the seconds of the boxes' forward
pass among them. Needs CuPy and a usable GPU.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import onnx

from l0tre_core.certify import InputSet, Network, certify
from l0tre_core.certify.arrays import NUMPY, cupy_backend
from l0tre_core.certify import boxes
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.search import problem_for

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
T2 = {"mnist_convsmall": [5, 10], "mnist_convsmall_pgd": [0], "mnist_maxpool_pgd": [0, 1]}


def _net(name: str) -> Network:
    model = onnx.load(str(ROOT / "benchmarks" / "zoo" / f"{name}.onnx"))
    return Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))


def _inputs(x: np.ndarray) -> InputSet:
    return InputSet(x0=x, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)


def one_pass(name: str, images: np.ndarray, n_boxes: int, gpu) -> None:
    net = _net(name)
    x = images[0]
    ref = int(np.argmax(net.forward(x[None])[0]))
    prob = problem_for(net, _inputs(x))
    prob.prepare_float32(2)
    rng = np.random.default_rng(0)
    parts = []
    for k in [1] * (n_boxes // 3) + [2] * (n_boxes // 3) + [20] * (n_boxes - 2 * (n_boxes // 3)):
        sc = rng.choice(784, k, replace=False)
        parts.append(Boxes(sc[None], (prob.lo[sc] - prob.x0[sc])[None], (prob.hi[sc] - prob.x0[sc])[None], np.zeros(1, np.int64)))
    boxes = Boxes.concat(parts)
    got = {}
    for be in (NUMPY, gpu):
        prob.arrays = be
        box_bounds(prob, boxes, ref, budget=2)  # warm-up: CuPy compiles its kernels, caches fill
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            got[be.name] = box_bounds(prob, boxes, ref, budget=2)[0]  # as the cover bounds its blocks
            times.append(time.perf_counter() - t0)
        got[be.name + " s"] = float(np.median(times))
    diff = float(np.abs(got["numpy"] - got["cupy"]).max())
    print(f"{name}: box_bounds of {len(boxes)} boxes: numpy {got['numpy s']:.3f} s, cupy {got['cupy s']:.3f} s "
          f"({got['numpy s'] / got['cupy s']:.1f}x); largest difference {diff:.2e}", flush=True)


_IN_FORWARD = [0.0]


def _timed_forward() -> None:
    """Count the seconds spent in the boxes' forward pass."""
    real = boxes._forward

    def timed(*args, **kw):
        t0 = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            _IN_FORWARD[0] += time.perf_counter() - t0

    boxes._forward = timed


def whole(name: str, images: np.ndarray, idx: list[int], limit: float, gpu) -> None:
    net = _net(name)
    for i in idx:
        x = images[i]
        ref = int(np.argmax(net.forward(x[None])[0]))
        row = []
        for be in (NUMPY, gpu):
            certify(net, _inputs(x), ref, 1, time_limit=limit, arrays=be)
            _IN_FORWARD[0] = 0.0
            t0 = time.perf_counter()
            v = certify(net, _inputs(x), ref, 2, time_limit=limit, arrays=be)
            row.append((v.status, time.perf_counter() - t0, _IN_FORWARD[0], v.detail))
        (sa, ta, fa, da), (sb, tb, fb, db) = row
        print(f"{name} image {i}, t = 2: numpy {sa} {ta:.2f} s (forward pass {fa:.2f} s), cupy {sb} {tb:.2f} s "
              f"(forward pass {fb:.2f} s) ({ta / tb:.1f}x)  [{da} | {db}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=60.0)
    ap.add_argument("--boxes", type=int, default=256)
    ap.add_argument("--skip-whole", action="store_true")
    args = ap.parse_args()
    gpu = cupy_backend()
    if gpu is None:
        raise SystemExit("no usable CUDA GPU with CuPy here")
    import cupy

    print(f"CuPy {cupy.__version__}, {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, "
          f"{os.cpu_count()} CPU cores for NumPy; batches {gpu.chunk_scale}x the host's on the GPU", flush=True)
    _timed_forward()
    with gzip.open(MNIST) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[8000:].astype(np.float64) / 255
    for name in ("mnist_convsmall", "mnist_maxpool"):
        one_pass(name, images, args.boxes, gpu)
    if not args.skip_whole:
        for name, idx in T2.items():
            whole(name, images, idx, args.limit, gpu)


if __name__ == "__main__":
    main()
