"""What one block of the t = 2 cover costs: ms per block of one thread, for batches of random blocks
of a zoo MNIST model (budget 2, after a warm-up). Compare two commits by running it with each on
``PYTHONPATH`` (a ``git worktree`` of the other), alternating:

    OMP_NUM_THREADS=1 python benchmarks/certify_block_cost.py --model mnist_maxpool --pixels 8 --batches 16 32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from certify_budget import mnist_problem, zoo_mnist

from l0tre_core.certify import boxes as bx
from l0tre_core.certify.boxes import Boxes


def random_blocks(x: np.ndarray, pixels: int, batch: int, rng: np.random.Generator) -> Boxes:
    """``batch`` blocks of ``pixels`` random pixels of the MNIST image ``x``, each over [0, 1]."""
    S = np.stack([rng.choice(784, pixels, replace=False) for _ in range(batch)])
    return Boxes(S, np.minimum(-x[S], 0), np.maximum(1 - x[S], 0), np.zeros(batch, np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist_maxpool")
    ap.add_argument("--image", type=int, default=3, help="a correctly classified held-out image")
    ap.add_argument("--pixels", type=int, default=8, help="pixels per block")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="blocks per batch")
    args = ap.parse_args()
    net, xs, ys = zoo_mnist(args.model)
    x, ref = xs[args.image], int(ys[args.image])
    prob = mnist_problem(net, x, 2)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        blocks = random_blocks(x, args.pixels, batch, rng)
        bx.box_bounds(prob, blocks, ref, budget=2)  # warm-up: the network's caches
        reps = max(2, 256 // batch)
        started = time.perf_counter()
        for _ in range(reps):
            bx.box_bounds(prob, blocks, ref, budget=2)
        ms = 1e3 * (time.perf_counter() - started) / reps / batch
        print(f"{args.model}: blocks of {args.pixels} pixels, {batch} a batch: {ms:.2f} ms per block", flush=True)


if __name__ == "__main__":
    main()
