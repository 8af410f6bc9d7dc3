"""The stem (``l0tre_core/certify/stem.py``) on and off, side by side: seconds per batch of blocks,
and seconds per t = 2 certificate on held-out images (the stem changes no bound, so the covers
bound the same blocks; only the time differs).

    python benchmarks/certify_stem.py --model mnist_maxpool_pgd --blocks 4 16 24
    python benchmarks/certify_stem.py --model mnist_maxpool_pgd --images 0 3 --limit 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from certify_block_cost import random_blocks
from certify_budget import mnist_problem, zoo_mnist

from l0tre_core.certify import InputSet, certify, stem
from l0tre_core.certify import boxes as bx


def blocks(name: str, sizes: list[int], batch: int, reps: int) -> None:
    net, xs, ys = zoo_mnist(name)
    x, ref = xs[3], int(ys[3])
    prob = mnist_problem(net, x, 2)
    print(f"{name}: the stem ends at node {stem.stem_end(prob, bx.BUDGET_ROWS)} (cut {net.cut})")
    rng = np.random.default_rng(0)
    for f in sizes:
        boxes = random_blocks(x, f, batch, rng)
        spent: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(reps):  # alternating, after one warm-up each
            for on in (False, True):
                stem.ENABLED = on
                t0 = time.perf_counter()
                bx.box_bounds(prob, boxes, ref, budget=2 if f > 1 else None)
                spent[on].append(time.perf_counter() - t0)
        off, on_ = (1e3 * np.median(spent[k][1:]) for k in (False, True))
        print(f"blocks of {f:3d} pixels, {batch} a batch: {off:6.1f} ms without the stem, {on_:6.1f} ms with it "
              f"({off / on_:.2f}x)")


def covers(name: str, images: list[int], limit: float) -> None:
    net, xs, ys = zoo_mnist(name)
    total = {False: 0.0, True: 0.0}
    for i in images:
        inputs = InputSet(x0=xs[i], lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)
        certify(net, inputs, int(ys[i]), 1, time_limit=60)  # t = 1 first, as the engine runs it
        for on in (False, True):
            stem.ENABLED = on
            t0 = time.perf_counter()
            v = certify(net, inputs, int(ys[i]), 2, time_limit=limit)
            dt = time.perf_counter() - t0
            total[on] += dt
            print(f"image {i} {'with' if on else 'without'} the stem: {v.status} in {dt:.2f} s ({v.detail})")
    print(f"total: {total[False]:.1f} s without the stem, {total[True]:.1f} s with it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist_maxpool_pgd")
    ap.add_argument("--blocks", type=int, nargs="*", default=[], help="block sizes (pixels) to time")
    ap.add_argument("--batch", type=int, default=11, help="blocks per batch (the cover's batches hold 11-31)")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--images", type=int, nargs="*", default=[], help="held-out images to certify at t = 2")
    ap.add_argument("--limit", type=float, default=60.0)
    args = ap.parse_args()
    if args.blocks:
        blocks(args.model, args.blocks, args.batch, args.reps)
    if args.images:
        covers(args.model, args.images, args.limit)


if __name__ == "__main__":
    main()
