"""t = 1 certification time per input on a zoo MNIST model, for side-by-side runs of two code bases.

    python benchmarks/certify_t1_speed.py benchmarks/zoo/mnist_maxpool.onnx 6 60             # this tree
    PYTHONPATH=/work/main python benchmarks/certify_t1_speed.py benchmarks/zoo/mnist_maxpool.onnx 6 60

Calls ``certify(net, inputs, ref, 1, time_limit=LIMIT)`` on the first N held-out MNIST images
(t10k 8000+, pixels in [0, 1], reference = prediction) and prints which l0tre_core ran, and each
input's verdict and seconds (certify only; the network is built once, outside the timing).
"""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import l0tre_core
from l0tre_core.certify import InputSet, Network, certify

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def main() -> None:
    path, n, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    model = onnx.load(path)
    with gzip.open(MNIST) as f:
        imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[8000:]
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))
    out = []
    for i in range(n):
        x = imgs[i].astype(np.float64).reshape(-1) / 255
        inputs = InputSet(x0=x, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)
        ref = int(np.argmax(net.forward(x[None])[0]))
        t0 = time.perf_counter()
        v = certify(net, inputs, ref, 1, time_limit=limit)
        out.append((v.status, round(time.perf_counter() - t0, 2)))
    print(l0tre_core.__file__, out)


if __name__ == "__main__":
    main()
