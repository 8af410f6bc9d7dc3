"""Our one-pass L0 bound against auto_LiRPA's CROWN with PerturbationL0Norm, on the zoo's CNNs.

The same comparison as ``benchmarks/certify_vs_autolirpa.py`` (which covers the MLP), on the
models of ``scripts/zoo.py`` (their PyTorch twins, same weights as the ONNX files). Inputs: the
first N held-out MNIST test images (t10k 8000+), or for the ResNets (``fmnist_resnet*``) the first
N images of the zoo's Fashion-MNIST sample (3x32x32, normalised outside the network with the
card's mean and std); reference label: the prediction. Set: at most t features changed, each to
any value of its valid range ([0, 1] before normalisation). auto_LiRPA counts features, so on the
3-channel ResNet both sides count features here, not pixels (a pixel is 3 features). Certified
iff every lower bound of z_ref - z_k (k != ref) is > 0. Ours is the float64 one-pass bound
(``margin_lower_bounds``, no float32 terms, as auto_LiRPA's).

On the ResNets auto_LiRPA 0.3 has no valid bound to compare with (measured, see
``benchmarks/RESULTS.md``): its ``PerturbationL0Norm`` takes every feature to range over [0, 1],
so the set is given to it in [0, 1] with the normalisation inside the bounded graph; there its
intermediate bounds start from the clean point (``x_L = x_U = x``) and its margin bounds are
false (held-out image 0, t = 1: 1.285, where one changed feature reaches 0.872).

    python benchmarks/certify_lirpa_zoo.py --side ours --model mnist_convsmall --out /tmp/ours.json
    /work/torchenv/bin/python benchmarks/certify_lirpa_zoo.py --side lirpa --model mnist_convsmall --out /tmp/lirpa.json
    python benchmarks/certify_lirpa_zoo.py --side table --ours /tmp/ours.json --lirpa /tmp/lirpa.json

auto_LiRPA 0.3 from PyPI installs into torch 2.13 with ``pip install --no-deps auto_LiRPA==0.3``
plus tqdm and pyyaml; the run-time shims of ``certify_vs_autolirpa.py`` are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from certify_vs_autolirpa import images  # noqa: E402  (t10k 8000+, float64 in [0, 1], [N, 784])

TS = (1, 2, 3)


def data(model: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images ``[n, C, H, W]`` in [0, 1] and the normalisation the model expects outside its
    graph (``mean``, ``std`` ``[C, 1, 1]``: zeros and ones where there is none)."""
    if not model.startswith("fmnist_resnet"):
        return images(n).reshape(-1, 1, 28, 28), np.zeros((1, 1, 1)), np.ones((1, 1, 1))
    card = json.loads((ROOT / "benchmarks" / "zoo" / f"{model}.onnx.l0tre.json").read_text())
    raw = np.load(ROOT / "benchmarks" / "zoo" / "fashion32_test_200.npz")["x"][:n]  # [n, 32, 32, 3] uint8
    return (raw.transpose(0, 3, 1, 2).astype(np.float64) / 255.0, np.asarray(card["mean"], np.float64).reshape(3, 1, 1),
            np.asarray(card["std"], np.float64).reshape(3, 1, 1))


def run_ours(model: str, n: int) -> dict:
    import onnx

    from l0tre_core.certify import InputSet, Network, margin_lower_bounds

    xs, mean, std = data(model, n)
    shape = xs.shape[1:]
    d = xs[0].size
    # the set in the model's (normalised) input space: the image of [0, 1] per feature
    lo = (np.broadcast_to(0.0, shape) - mean) / std
    hi = (np.broadcast_to(1.0, shape) - mean) / std
    proto = onnx.load(str(ROOT / "benchmarks" / "zoo" / f"{model}.onnx"))
    net = Network.from_onnx(proto, proto.graph.input[0].name, proto.graph.output[0].name, shape)
    res: dict = {"refs": [], "lb": {str(t): [] for t in TS}, "seconds": []}
    for x in xs:
        img = ((x - mean) / std).reshape(-1)
        inp = InputSet(x0=img, lo=lo.reshape(-1), hi=hi.reshape(-1), pixel=np.arange(d), n_pixels=d)
        ref = int(np.argmax(net.forward(img[None])[0]))
        res["refs"].append(ref)
        t0 = time.perf_counter()
        for t in TS:
            res["lb"][str(t)].append(float(np.delete(margin_lower_bounds(net, inp, ref, t), ref).min()))
        res["seconds"].append((time.perf_counter() - t0) / len(TS))
    return res


def run_lirpa(model: str, n: int) -> dict:
    from certify_vs_autolirpa import _lirpa_shims

    _lirpa_shims()
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationL0Norm
    import auto_LiRPA.bound_general as bg
    from zoo import load_twin

    # auto_LiRPA 0.3 overrides a torch method with its pre-2.0 signature
    named = BoundedModule._named_members
    BoundedModule._named_members = (lambda self, fn, prefix="", recurse=True, remove_duplicate=True:
                                    named(self, fn, prefix, recurse))
    torch.set_default_dtype(torch.float64)
    xs, mean, std = data(model, n)

    class Normalised(torch.nn.Module):
        """The twin behind its normalisation: auto_LiRPA's PerturbationL0Norm takes every feature
        to range over [0, 1] whatever x_L and x_U say (its concretize has a FIXME saying so), so
        the set is given to it in [0, 1] and normalised inside the bounded graph."""

        def __init__(self, twin: torch.nn.Module) -> None:
            super().__init__()
            self.twin = twin
            self.register_buffer("mean", torch.tensor(mean[None]))
            self.register_buffer("std", torch.tensor(std[None]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.twin((x - self.mean) / self.std)

    # auto_LiRPA 0.3 flattens masks with .view, which fails on the non-contiguous bounds the
    # normalisation's broadcast leaves: hand it contiguous ones (values unchanged)
    unstable = BoundedModule.get_unstable_locations
    BoundedModule.get_unstable_locations = (lambda self, lb, ub, *a, **k:
                                            unstable(self, lb.contiguous(), ub.contiguous(), *a, **k))
    net = Normalised(load_twin(model).double()).double()
    x_lo, x_hi = torch.zeros((1,) + xs.shape[1:]), torch.ones((1,) + xs.shape[1:])
    # matrix mode: PerturbationL0Norm cannot concretise auto_LiRPA's patches (its default for convolutions)
    bm = BoundedModule(net, (torch.zeros((1,) + xs.shape[1:]),), bound_opts={"conv_mode": "matrix"})
    variants = {"default": None, "bwd-first": False}
    orig_first = bg.BoundedModule.check_IBP_first_linear
    res: dict = {"refs": [], "lb": {v: {str(t): [] for t in TS} for v in variants}, "seconds": {v: [] for v in variants}}
    for x in xs:
        xt = torch.tensor(x[None])
        with torch.no_grad():
            ref = int(net(xt).argmax())
        res["refs"].append(ref)
        others = [k for k in range(10) if k != ref]
        C = torch.zeros(1, 9, 10)
        for i, k in enumerate(others):
            C[0, i, ref], C[0, i, k] = 1.0, -1.0
        for vname, patch in variants.items():
            bg.BoundedModule.check_IBP_first_linear = orig_first if patch is None else (lambda self, node: False)
            t0 = time.perf_counter()
            for t in TS:
                ptb = PerturbationL0Norm(eps=t, x_L=x_lo, x_U=x_hi, ratio=1.0)
                lb, _ = bm.compute_bounds(x=(BoundedTensor(xt, ptb),), C=C, method="CROWN", bound_upper=False)
                res["lb"][vname][str(t)].append(float(lb.detach().min()))
            res["seconds"][vname].append((time.perf_counter() - t0) / len(TS))
    bg.BoundedModule.check_IBP_first_linear = orig_first
    return res


def table(ours: dict, lirpa: dict) -> str:
    n = len(ours["refs"])
    assert ours["refs"] == lirpa["refs"], "the two sides disagree on the predictions"
    rows = ["| t | ours one-pass % | auto_LiRPA default % | auto_LiRPA bwd-first % | inputs where auto_LiRPA's bound "
            "is higher (default / bwd-first) | max (LiRPA - ours) |", "|---|---|---|---|---|---|"]
    for t in TS:
        o = np.array(ours["lb"][str(t)])
        d = np.array(lirpa["lb"]["default"][str(t)])
        f = np.array(lirpa["lb"]["bwd-first"][str(t)])
        tol = 1e-9 * np.maximum(1.0, np.abs(o))
        rows.append(f"| {t} | {100 * np.mean(o > 0):.0f} | {100 * np.mean(d > 0):.0f} | {100 * np.mean(f > 0):.0f} | "
                    f"{int(np.sum(d > o + tol))} / {int(np.sum(f > o + tol))} | {max(float(np.max(d - o)), float(np.max(f - o))):.3g} |")
    secs = (f"seconds per input and t: ours {np.median(ours['seconds']):.3f}, auto_LiRPA default "
            f"{np.median(lirpa['seconds']['default']):.3f}, bwd-first {np.median(lirpa['seconds']['bwd-first']):.3f} (median, n = {n})")
    return "\n".join(rows) + "\n\n" + secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=("ours", "lirpa", "table"), required=True)
    ap.add_argument("--model", default="mnist_convsmall")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--ours", type=Path)
    ap.add_argument("--lirpa", type=Path)
    args = ap.parse_args()
    if args.side == "table":
        print(table(json.loads(args.ours.read_text()), json.loads(args.lirpa.read_text())))
        return
    res = run_ours(args.model, args.n) if args.side == "ours" else run_lirpa(args.model, args.n)
    text = json.dumps(res)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
