"""Covering blocks bounded as the whole box against the L0 ball of size t over their pixels.

For random blocks of k pixels of the zoo's MNIST networks (float32 terms prepared for t), each
block is bounded twice with ``box_bounds``: as the box that frees all its pixels
(``inside_ball=False``, what the cover did before) and with ``budget=t`` (at most t of its pixels
changed, what the cover must prove). Prints, per image and block size: the share of blocks
proven, the median of the least margin bound, and milliseconds per block.

    python benchmarks/certify_budget.py --model mnist_maxpool_pgd --images 0 1 --pixels 16 24 32 48

``--anchor off`` bounds the budget blocks without anchoring their rows at the cut's clean values
(``boxes.ANCHOR``), as before the eighth pass.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx

from l0tre_core.certify import InputSet, Network, boxes
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.problem import Problem
from l0tre_core.certify.search import problem_for

ROOT = Path(__file__).resolve().parents[1]


def zoo_mnist(name: str) -> tuple[Network, np.ndarray, np.ndarray]:
    """A zoo MNIST model's network, and the held-out images it classifies correctly ``[N, 784]``
    (in [0, 1]) with their labels."""
    model = onnx.load(str(ROOT / "benchmarks" / "zoo" / f"{name}.onnx"))
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))
    held = np.load(ROOT / "l0tre_core" / "demo" / "mnist_heldout_500.npz")
    x_all = held["x"].reshape(len(held["x"]), -1).astype(np.float64) / 255
    keep = np.flatnonzero(net.forward(x_all).argmax(1) == held["y"])
    return net, x_all[keep], held["y"][keep]


def mnist_problem(net: Network, x0: np.ndarray, t: int) -> Problem:
    """The problem of image ``x0`` (every pixel free in [0, 1]), float32 terms prepared for ``t``."""
    prob = problem_for(net, InputSet(x0=x0, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784))
    prob.prepare_float32(t)
    return prob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist_maxpool_pgd", help="a model of benchmarks/zoo")
    ap.add_argument("--images", type=int, nargs="+", default=[0, 1], help="correctly classified held-out images")
    ap.add_argument("--pixels", type=int, nargs="+", default=[16, 24, 32, 48], help="block sizes")
    ap.add_argument("--blocks", type=int, default=24, help="random blocks per image and size")
    ap.add_argument("--t", type=int, default=2)
    ap.add_argument("--anchor", choices=("on", "off"), default="on", help="budget blocks anchored at the cut")
    args = ap.parse_args()
    boxes.ANCHOR = args.anchor == "on"
    net, images, labels = zoo_mnist(args.model)
    rng = np.random.default_rng(0)
    print("| held-out image | pixels | whole box: proven, median, ms | budget t: proven, median, ms |")
    print("|---|---|---|---|")
    for i in args.images:
        x0, ref = images[i], int(labels[i])
        prob = mnist_problem(net, x0, args.t)
        for k in args.pixels:
            S = np.stack([rng.choice(784, k, replace=False) for _ in range(args.blocks)])
            blocks = Boxes(S, -x0[S], 1 - x0[S], np.zeros(len(S), np.int64))
            cells = []
            for kw in ({"inside_ball": False}, {"budget": args.t}):
                box_bounds(prob, blocks.take(np.arange(2)), ref, **kw)  # (caches warm)
                start = time.perf_counter()
                lb, _ = box_bounds(prob, blocks, ref, **kw)
                ms = (time.perf_counter() - start) / len(S) * 1e3
                least = lb.min(axis=1)
                cells.append(f"{np.mean(least > 0):.2f}, {np.median(least):.2f}, {ms:.1f}")
            print(f"| {i} | {k} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
