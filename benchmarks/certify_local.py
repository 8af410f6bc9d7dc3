"""What the per-box backward pass (``certify/local.py``) buys on single-pixel boxes, side by side.

    python benchmarks/certify_local.py [--models mnist_maxpool fmnist_resnet_pgd] [--inputs 2]
                                       [--pixels 12] [--splits 1 2 4]

For each zoo model, the first ``--inputs`` held-out inputs and, on each, the ``--pixels`` pixels whose
whole-range box has the lowest margin bound (forward-mode and backward CROWN, no local pass): every
pixel's whole-range box is cut into ``s`` equal slices per free scalar (``s ** F`` sub-boxes, as
bisection reaches them) and bounded by ``box_bounds`` with the local pass off and on, for the
float32 network and in float64 (``exact_arithmetic``). Printed per row: the share of sub-boxes
proven, the share of pixels all of whose sub-boxes are proven, the median margin bound in clean
margins, and milliseconds per sub-box.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import onnx

from l0tre_core.certify import InputSet, Network, local
from l0tre_core.certify.boxes import Boxes, box_bounds, clean_margins
from l0tre_core.certify.search import problem_for

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"


def _inputs(name: str, n: int) -> tuple[Network, list[InputSet]]:
    model = onnx.load(str(ZOO / f"{name}.onnx"))
    if name.startswith("fmnist"):
        shape, (m, s) = (3, 32, 32), (0.219, 0.3318)
        xs = np.load(ZOO / "fashion32_test_200.npz")["x"][:n].astype(np.float64).transpose(0, 3, 1, 2) / 255
    else:
        shape, (m, s) = (1, 28, 28), (0.0, 1.0)
        xs = np.load(ROOT / "l0tre_core" / "demo" / "mnist_heldout_500.npz")["x"][:n].astype(np.float64)
        xs = xs.reshape(n, -1) / (255 if xs.max() > 1.5 else 1)
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, shape)
    d = int(np.prod(shape))
    pix = np.arange(d) % (shape[1] * shape[2])
    sets = [InputSet(x0=(x.reshape(-1) - m) / s, lo=np.full(d, -m / s), hi=np.full(d, (1 - m) / s), pixel=pix,
                     n_pixels=shape[1] * shape[2]) for x in xs]
    return net, sets


def _sub_boxes(prob: object, pixels: np.ndarray, splits: int) -> Boxes:
    sc_all = prob.pixel_scalars[pixels]  # type: ignore[attr-defined]
    f = sc_all.shape[1]
    edges = np.linspace(0.0, 1.0, splits + 1)
    S, lo, hi = [], [], []
    for sc in sc_all:
        width = prob.hi[sc] - prob.lo[sc]  # type: ignore[attr-defined]
        for cell in itertools.product(range(splits), repeat=f):
            c = np.array(cell)
            S.append(sc)
            lo.append(prob.lo[sc] + edges[c] * width - prob.x0[sc])  # type: ignore[attr-defined]
            hi.append(prob.lo[sc] + edges[c + 1] * width - prob.x0[sc])  # type: ignore[attr-defined]
    return Boxes(np.array(S), np.array(lo), np.array(hi), np.zeros(len(S), dtype=np.int64))


def _hardest(prob: object, ref: int, n: int) -> np.ndarray:
    """The ``n`` pixels whose whole-range box has the lowest margin bound without the local pass."""
    enabled, local.ENABLED = local.ENABLED, False
    try:
        lb, _ = box_bounds(prob, _sub_boxes(prob, np.arange(prob.P), 1), ref)  # type: ignore[attr-defined]
    finally:
        local.ENABLED = enabled
    return np.argsort(lb.min(axis=1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["mnist_convsmall", "mnist_maxpool", "fmnist_resnet_pgd"])
    ap.add_argument("--inputs", type=int, default=2)
    ap.add_argument("--pixels", type=int, default=12)
    ap.add_argument("--splits", type=int, nargs="*", default=[1, 2, 4])
    args = ap.parse_args()
    print("| model | slices per scalar | arithmetic | local | sub-boxes | proven % | pixels proven % | median bound / clean margin | ms per sub-box |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        net, sets = _inputs(name, args.inputs)
        refs = [int(np.argmax(net.forward(inputs.x0[None])[0])) for inputs in sets]
        picks = []
        for inputs, ref in zip(sets, refs):
            prob = problem_for(net, inputs)
            prob.prepare_float32(1)
            picks.append(_hardest(prob, ref, args.pixels))
        for s in args.splits:
            for exact in (False, True):
                rows: dict[bool, list[tuple[np.ndarray, float, float]]] = {False: [], True: []}
                for inputs, ref, pixels in zip(sets, refs, picks):
                    prob = problem_for(net, inputs)
                    prob.prepare_float32(1)
                    prob.exact_arithmetic = exact
                    boxes = _sub_boxes(prob, pixels, s)
                    cm = float(np.abs(clean_margins(prob, ref)).min())
                    box_bounds(prob, boxes.take(np.arange(1)), ref)  # the per-input caches, untimed
                    for on in (False, True):
                        local.ENABLED = on
                        t0 = time.perf_counter()
                        lb, _ = box_bounds(prob, boxes, ref)
                        rows[on].append((lb.min(axis=1), (time.perf_counter() - t0) / len(boxes), cm))
                local.ENABLED = True
                for on in (False, True):
                    lbs = [r[0] for r in rows[on]]
                    boxes_ok = np.concatenate([lb > 0 for lb in lbs])
                    pix_ok = np.concatenate([(lb > 0).reshape(args.pixels, -1).all(axis=1) for lb in lbs])
                    rel = np.concatenate([lb / r[2] for lb, r in zip(lbs, rows[on])])
                    ms = 1000 * float(np.mean([r[1] for r in rows[on]]))
                    print(f"| `{name}` | {s} | {'float64' if exact else 'float32'} | {'on' if on else 'off'} | "
                          f"{boxes_ok.size} | {100 * boxes_ok.mean():.0f} | {100 * pix_ok.mean():.0f} | "
                          f"{np.median(rel):.2f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
