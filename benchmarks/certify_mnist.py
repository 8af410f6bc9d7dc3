"""Sound L0 certification on the real MNIST models: how much the one-pass bound and t = 1 splitting prove.

For N held-out MNIST images (t10k 8000+, never trained on) and each model, with the model's own
prediction as the reference label and every pixel free in [0, 1]:

- one-pass: the share of inputs whose one-pass bound proves robustness at t = 1 .. T;
- t = 1 split: the share proven / refuted / unknown by the complete t = 1 search (boxes, bisection);
- seconds per input for each;
- with ``--split-ts 2,3``: the same for the branch-and-bound search at those t (bounded by
  ``--time-limit``; "unknown" when it runs out).

    python benchmarks/certify_mnist.py [N] [--t-max 5] [--time-limit 60] [--models demo,mlp,maxpool] [--split-ts 2]

Times are wall-clock on this machine, one process, NumPy float64.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import onnx

from l0tre_core.certify import InputSet, Network, certify, proof_margins

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")
MODELS = {
    # name: (path, sample shape, pixel map, normalisation outside the graph)
    "demo": (ROOT / "l0tre_core/demo/mnist_cnn.onnx", (1, 28, 28), None),
    "mlp": (ROOT / "tests/data/models/mlp_b1.onnx", (784,), None),
    "maxpool": (ROOT / "tests/data/models/cnn_maxpool_b1.onnx", (1, 28, 28), None),
    "nhwc": (ROOT / "tests/data/models/cnn_nhwc.onnx", (28, 28, 1), None),
    "norm_outside": (ROOT / "tests/data/models/cnn_norm_outside.onnx", (1, 28, 28), (0.1307, 0.3081)),
}


def heldout_images(n: int, start: int) -> np.ndarray:
    if MNIST.exists():
        with gzip.open(MNIST) as f:
            raw = f.read()
        imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[8000:]
    else:
        imgs = np.load(ROOT / "l0tre_core/demo/mnist_heldout_500.npz")["x"]
    return imgs[start : start + n].astype(np.float64) / 255.0


def input_set(img: np.ndarray, norm: tuple[float, float] | None) -> InputSet:
    x = img.reshape(-1)  # 28x28 single channel: every layout flattens to the same order
    lo, hi = np.zeros(784), np.ones(784)
    if norm is not None:
        mean, std = norm
        x, lo, hi = (x - mean) / std, (lo - mean) / std, (hi - mean) / std
    return InputSet(x0=x, lo=lo, hi=hi, pixel=np.arange(784), n_pixels=784)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=20)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--t-max", type=int, default=5)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--models", default="demo,mlp,maxpool")
    ap.add_argument("--split-ts", default="", help="further t values for the split search, e.g. 2,3")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    imgs = heldout_images(args.n, args.start)
    ts = list(range(1, args.t_max + 1))
    print(f"{len(imgs)} held-out MNIST images (t10k {8000 + args.start}..), t = 1..{args.t_max}, "
          f"t = 1 split time limit {args.time_limit:.0f} s")
    header = "model     " + " ".join(f"1p t={t:<2d}" for t in ts) + "  1p s/in | t=1 split: proven refuted unknown  s/in (max)"
    print(header)
    for name in args.models.split(","):
        path, shape, norm = MODELS[name]
        model = onnx.load(str(path))
        net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, shape)
        one = np.zeros((len(imgs), len(ts)), bool)
        t_one, t_split = [], []
        split = {"proven": 0, "refuted": 0, "unknown": 0}
        for i, img in enumerate(imgs):
            inp = input_set(img, norm)
            ref = int(np.argmax(net.forward(inp.x0[None])[0]))
            t0 = time.perf_counter()
            for j, t in enumerate(ts):
                one[i, j] = proof_margins(net, inp, ref, t).min() > 0  # proofs for the float32 network
                if not one[i, j]:
                    break  # a larger t cannot be proven by the same pass either
            t_one.append(time.perf_counter() - t0)
            v = certify(net, inp, ref, 1, time_limit=args.time_limit)
            t_split.append(v.seconds)
            split[v.status] += 1
            if args.verbose:
                print(f"  {name} #{args.start + i}: one-pass proves t<={int(one[i].sum())}, t=1 {v.status} "
                      f"({v.detail}, {v.seconds:.2f}s)", flush=True)
        n = len(imgs)
        cells = " ".join(f"{100 * one[:, j].mean():6.1f}%" for j in range(len(ts)))
        print(f"{name:<9} {cells}  {np.mean(t_one):7.3f} | {100 * split['proven'] / n:14.1f}% "
              f"{100 * split['refuted'] / n:6.1f}% {100 * split['unknown'] / n:6.1f}%  "
              f"{np.mean(t_split):5.2f} ({np.max(t_split):.1f})", flush=True)
        for t in [int(v) for v in args.split_ts.split(",") if v]:
            res = {"proven": 0, "refuted": 0, "unknown": 0}
            secs = []
            for i, img in enumerate(imgs):
                inp = input_set(img, norm)
                ref = int(np.argmax(net.forward(inp.x0[None])[0]))
                v = certify(net, inp, ref, t, time_limit=args.time_limit)
                res[v.status] += 1
                secs.append(v.seconds)
                if args.verbose:
                    print(f"  {name} #{args.start + i}: t={t} {v.status} ({v.detail}, {v.seconds:.2f}s)", flush=True)
            print(f"{name:<9} t={t} split: proven {100 * res['proven'] / n:.1f}%  refuted {100 * res['refuted'] / n:.1f}%  "
                  f"unknown {100 * res['unknown'] / n:.1f}%  s/in {np.mean(secs):.2f} (max {np.max(secs):.1f})", flush=True)


if __name__ == "__main__":
    main()
