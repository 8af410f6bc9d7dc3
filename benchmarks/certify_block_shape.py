"""What a covering block's shape does to its bound: random pixels, pixels spread apart, square
patches (budget t = 2, the zoo's MNIST CNNs, float32 terms for t = 2).

    python benchmarks/certify_block_shape.py --model mnist_maxpool_pgd --images 0 3 --pixels 24 32 40
    python benchmarks/certify_block_shape.py --model mnist_maxpool_pgd --images 0 --layers 48 [--anchor off]
    python benchmarks/certify_block_shape.py --model mnist_maxpool_pgd --images 0 3 --lines 29 41 59

Per image and size: the share of blocks proven and the median least margin bound (in the
network's units) for random blocks, blocks whose pixels are at least ``--apart`` apart
(Chebyshev; 3 from 40 pixels on, where 4 no longer fits), and the 25 square patches of the
nearest side. ``--layers K``: one random block of K pixels in float64, each node's interval
width summed against the range sampled over all its pairs of pixels (3 x 3 values each).
``--lines q``: the lines of the affine plane AG(2, q) laid on the image (pixel (r, c) is the
point (r, c), q >= 28), split into the lines whose pixels are all at least ``--apart`` apart
and the others, against random blocks of the same size.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from certify_budget import mnist_problem, zoo_mnist
from l0tre_core.certify import Network, boxes
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.problem import Budget


def spread(rng: np.random.Generator, k: int, apart: int) -> np.ndarray:
    """k pixels of 28 x 28, each at least ``apart`` from the others (greedy over a permutation)."""
    while True:
        chosen: list[tuple[int, int]] = []
        for p in rng.permutation(784):
            r, c = divmod(int(p), 28)
            if all(max(abs(r - r2), abs(c - c2)) >= apart for r2, c2 in chosen):
                chosen.append((r, c))
                if len(chosen) == k:
                    return np.array([r * 28 + c for r, c in chosen])


def patches(side: int) -> np.ndarray:
    starts = range(0, 28 - side + 1, max(1, (28 - side) // 4))
    return np.stack([np.array([(r + a) * 28 + c + b for a in range(side) for b in range(side)])
                     for r in starts for c in starts])


def spatial_lines(q: int, apart: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The lines c = a r + b (mod q) and the columns of AG(2, q) over the 28 x 28 pixels, as (spread,
    near): a line is near when two of its pixels are closer than ``apart`` (Chebyshev)."""
    spread_, near = [], []
    sloped = [[(r, (a * r + b) % q) for r in range(28) if (a * r + b) % q < 28] for a in range(q) for b in range(q)]
    for pts in sloped + [[(r, c) for r in range(28)] for c in range(28)]:
        if len(pts) < 3:
            continue
        close = any(max(abs(r - r2), abs(c - c2)) < apart for (r, c), (r2, c2) in itertools.combinations(pts, 2))
        (near if close else spread_).append(np.array([r * 28 + c for r, c in pts]))
    return spread_, near


def least(prob, x0: np.ndarray, ref: int, S: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    lb, _ = box_bounds(prob, Boxes(S, -x0[S], 1 - x0[S], np.zeros(len(S), np.int64)), ref, budget=2)
    return lb.min(axis=1)


def layers(net: Network, prob, x0: np.ndarray, ref: int, S: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    prob.exact_arithmetic = True
    print("least margin bound", float(least(prob, x0, ref, S[None])[0]))
    bounds, *_ = boxes._forward(prob, S[None], -x0[S][None], (1 - x0[S])[None], boxes._clean(prob), budget=Budget(2, 1))
    pts = []
    for a, b in itertools.combinations(range(S.size), 2):
        for va, vb in itertools.product((0.0, 0.5, 1.0), repeat=2):
            x = x0.copy()
            x[S[a]], x[S[b]] = va, vb
            pts.append(x)
    values = net.node_values(np.array(pts))
    z = values[net.output]
    print("sampled least margin", float((z[:, [ref]] - np.delete(z, ref, 1)).min()))
    for j, nd in enumerate(net.nodes):
        if j and bounds[j] is not None:
            width = float((bounds[j][1][0] - bounds[j][0][0]).sum())
            seen = float((values[j].max(0) - values[j].min(0)).sum())
            print(f"node {j} {nd.kind} {nd.size}: width {width:.3g}, sampled {seen:.3g}, ratio {width / max(seen, 1e-12):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist_maxpool_pgd", help="a model of benchmarks/zoo")
    ap.add_argument("--images", type=int, nargs="+", default=[0, 3], help="correctly classified held-out images")
    ap.add_argument("--pixels", type=int, nargs="+", default=[24, 32, 40], help="block sizes")
    ap.add_argument("--blocks", type=int, default=16, help="blocks per image, size and shape")
    ap.add_argument("--apart", type=int, default=4, help="least distance of a spread block's pixels")
    ap.add_argument("--layers", type=int, default=0, help="per-node widths of one random block of this size")
    ap.add_argument("--anchor", choices=("on", "off"), default="on", help="budget blocks anchored at the cut")
    ap.add_argument("--lines", type=int, nargs="*", help="orders q of AG(2, q) laid on the image (q >= 28)")
    args = ap.parse_args()
    boxes.ANCHOR = args.anchor == "on"
    net, images, labels = zoo_mnist(args.model)
    rng = np.random.default_rng(0)
    if args.lines:
        print("| held-out image | q | pixels per line | lines spread / near | spread lines | near lines | random blocks |")
        print("|---|---|---|---|---|---|---|")
    elif not args.layers:
        print("| held-out image | pixels | random | spread | square patches |")
        print("|---|---|---|---|---|")
    for i in args.images:
        x0, ref = images[i], int(labels[i])
        prob = mnist_problem(net, x0, 2)
        if args.layers:
            layers(net, prob, x0, ref, rng.choice(784, args.layers, replace=False))
            continue
        for q in args.lines or []:
            far, near = spatial_lines(q, args.apart)
            k = int(np.median([len(x) for x in far + near]))
            cells = []
            for group in (far, near):
                pick = [group[i] for i in rng.choice(len(group), min(len(group), args.blocks), replace=False)]
                lb = np.concatenate([least(prob, x0, ref, np.stack([x for x in pick if len(x) == n]))
                                     for n in sorted({len(x) for x in pick})])
                cells.append(f"{np.mean(lb > 0):.2f}, {np.median(lb):.2f}")
            lb = least(prob, x0, ref, np.stack([rng.choice(784, k, replace=False) for _ in range(args.blocks)]))
            cells.append(f"{np.mean(lb > 0):.2f}, {np.median(lb):.2f}")
            print(f"| {i} | {q} | {k} | {len(far)} / {len(near)} | {cells[0]} | {cells[1]} | {cells[2]} |", flush=True)
        if args.lines:
            continue
        for k in args.pixels:
            apart = args.apart if k < 40 else args.apart - 1
            side = int(round(k ** 0.5))
            cells = []
            for S in (np.stack([rng.choice(784, k, replace=False) for _ in range(args.blocks)]),
                      np.stack([spread(rng, k, apart) for _ in range(args.blocks)]), patches(side)):
                lb = least(prob, x0, ref, S)
                cells.append(f"{np.mean(lb > 0):.2f}, {np.median(lb):.2f}")
            print(f"| {i} | {k} | {cells[0]} | {cells[1]} (>= {apart} apart) | {cells[2]} ({side}x{side}) |", flush=True)


if __name__ == "__main__":
    main()
