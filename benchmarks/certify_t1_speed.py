"""Certification time per input on a zoo MNIST model, for side-by-side runs of two code bases.

    python benchmarks/certify_t1_speed.py benchmarks/zoo/mnist_maxpool.onnx 6 60             # this tree
    PYTHONPATH=/work/main python benchmarks/certify_t1_speed.py benchmarks/zoo/mnist_maxpool.onnx 6 60
    python benchmarks/certify_t1_speed.py benchmarks/zoo/mnist_convsmall.onnx 0 120 --t 2 --images 5 8 10

Calls ``certify(net, inputs, ref, 1, time_limit=LIMIT)`` on the first N held-out MNIST images
(t10k 8000+, pixels in [0, 1], reference = prediction), or on the held-out images ``--images``
(offsets from 8000), and prints which l0tre_core ran, and each input's verdict and seconds
(certify only; the network is built once, outside the timing). With ``--t 2`` (or more) every
input is certified at t = 1 first, as the engine does (the covering blocks reuse its pixel
bounds), and the seconds are those of level t alone, with its verdict's detail.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import onnx

import l0tre_core
from l0tre_core.certify import InputSet, Network, certify

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("n", type=int, help="the first N held-out images (ignored with --images)")
    ap.add_argument("limit", type=float, help="seconds per certificate")
    ap.add_argument("--t", type=int, default=1)
    ap.add_argument("--images", type=int, nargs="*", help="held-out images (offsets from t10k 8000)")
    args = ap.parse_args()
    model = onnx.load(args.model)
    with gzip.open(MNIST) as f:
        imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[8000:]
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))
    out = []
    for i in args.images if args.images else range(args.n):
        x = imgs[i].astype(np.float64).reshape(-1) / 255
        inputs = InputSet(x0=x, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)
        ref = int(np.argmax(net.forward(x[None])[0]))
        if args.t > 1:
            certify(net, inputs, ref, 1, time_limit=args.limit)
        t0 = time.perf_counter()
        v = certify(net, inputs, ref, args.t, time_limit=args.limit)
        out.append((i, v.status, round(time.perf_counter() - t0, 2), v.detail))
    print(l0tre_core.__file__)
    if args.t == 1:
        print([(status, seconds) for _, status, seconds, _ in out])
    else:
        for row in out:
            print(row)

if __name__ == "__main__":
    main()
