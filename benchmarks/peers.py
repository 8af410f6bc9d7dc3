"""l0tre's attack against the L0 attacks of the field, side by side in one process.

Every peer runs on the PyTorch twin of the model (same weights as the ONNX file), on the same
correctly classified images; l0tre's attack runs on the ONNX file. Every example, a peer's or
ours, is then judged by our own code alone: clipped to nothing (an example outside the valid range
fails), its pixel L0 recounted (a pixel counts once if any of its channels moved by more than
1e-6), and re-run in onnxruntime through l0tre's model path: it succeeds only if the ONNX model's
top-1 class differs from the label. Reported per attack: success rate, mean and median pixel L0 of
the successes, seconds per image (batched peers: their batch's time / images); then the
*per-image best* of all peers and how l0tre compares with it.

Peers need their own virtualenv (``scripts/install_peers.sh``): torch is never an l0tre dependency.

    /work/venv-peers/bin/python benchmarks/peers.py --models demo,mnist_mlp --n 20 [--zoo DIR --zoo-script PATH]
        [--peers sigma-zero,fmn-l0,...] [--json out.json]

Models: ``demo`` (the embedded CNN, twin benchmarks/models/demo_cnn.py + mnist_cnn.pt) and the
zoo's names (benchmarks/zoo/NAME.onnx, twin from scripts/zoo.py's ``load_twin``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
MOVED = 1e-6  # a channel counts as changed beyond this


def _stub_torchvision() -> None:
    """PyPI's torchvision is a CUDA build that cannot load next to CPU torch; adv-lib imports it
    only for parts an L0 benchmark does not use (peers-install.md), so an empty module stands in."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in ("torchvision", "torchvision.models", "torchvision.transforms", "torchvision.ops"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].models = sys.modules["torchvision.models"]  # type: ignore[attr-defined]
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]


# --- models and data ------------------------------------------------------------------------------


def load_pair(name: str, zoo: Path, zoo_script: Path) -> tuple[Path | None, Any, dict[str, Any]]:
    """(ONNX path or None for the demo, torch twin taking [0, 1] pixels NCHW, card)."""
    import torch

    if name == "demo":
        sys.path.insert(0, str(ROOT / "benchmarks" / "models"))
        from demo_cnn import DemoCNN

        net = DemoCNN()
        net.load_state_dict(torch.load(ROOT / "benchmarks" / "models" / "mnist_cnn.pt", map_location="cpu"))
        return None, net.eval(), {}
    spec = importlib.util.spec_from_file_location("zoo", zoo_script)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["zoo"] = mod  # its dataclasses look their module up while it executes
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    net = mod.load_twin(name, zoo)
    card = json.loads((zoo / f"{name}.onnx.l0tre.json").read_text())
    if card.get("mean") is not None:  # normalisation outside the graph: the peers see [0, 1] pixels
        mean = torch.tensor(card["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(card["std"], dtype=torch.float32).view(1, -1, 1, 1)
        inner = net
        net = torch.nn.Sequential(_Normalise(mean, std), inner).eval()
    return zoo / f"{name}.onnx", net, card


class _Normalise:  # a torch module built lazily so that this file imports without torch
    def __new__(cls, mean: Any, std: Any) -> Any:
        import torch

        class Normalise(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("mean", mean)
                self.register_buffer("std", std)

            def forward(self, x: Any) -> Any:
                return (x - self.mean) / self.std

        return Normalise()


def load_images(clf: Any, name: str, zoo: Path, n: int) -> Any:
    """The first ``n`` held-out images the ONNX model classifies correctly (l0tre's Dataset)."""
    from l0tre_core import load_data

    if clf.geometry.n_channels == 3:
        data = load_data(zoo / "fashion32_test_200.npz", clf.geometry, clf.card.range)
    else:
        data = load_data(MNIST, clf.geometry, clf.card.range, start=8000, n=max(4 * n, 50))
    keep = np.flatnonzero(clf.predict(data.x) == data.y)[:n]
    return data.subset(keep) if hasattr(data, "subset") else _subset(data, keep)


def _subset(data: Any, keep: np.ndarray) -> Any:
    import copy

    out = copy.copy(data)
    out.x, out.y, out.index = data.x[keep], data.y[keep], data.index[keep]
    return out


# --- peers ----------------------------------------------------------------------------------------


def peer_attacks(steps: int) -> dict[str, Callable[[Any, Any, Any], Any]]:
    """Each peer as ``f(model, x [N,C,H,W] in [0,1], y) -> x_adv``, with its usual settings."""
    import torch

    def sigma_zero(model: Any, x: Any, y: Any) -> Any:
        _stub_torchvision()
        from adv_lib.attacks.sigma_zero import sigma_zero as attack

        return attack(model, x, y, num_steps=steps)

    def fmn_l0(model: Any, x: Any, y: Any) -> Any:
        _stub_torchvision()
        from adv_lib.attacks import fmn

        return fmn(model, x, y, norm=0, steps=steps)  # batched: adv-lib 0.2.8 crashes at batch 1

    def _foolbox(attack: Any) -> Callable[[Any, Any, Any], Any]:
        def run(model: Any, x: Any, y: Any) -> Any:
            import foolbox as fb

            fmodel = fb.PyTorchModel(model, bounds=(0, 1))
            _, adv, _ = attack().__call__(fmodel, x, y, epsilons=None)
            return adv

        return run

    def pointwise() -> Any:
        import foolbox as fb

        return fb.attacks.PointwiseAttack()

    def salt_pepper() -> Any:
        import foolbox as fb

        return fb.attacks.SaltAndPepperNoiseAttack(steps=steps)

    def _ta(make: Callable[[Any], Any]) -> Callable[[Any, Any, Any], Any]:
        def run(model: Any, x: Any, y: Any) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return make(model)(x, y)

        return run

    def sparsefool(model: Any) -> Any:
        import torchattacks

        return torchattacks.SparseFool(model, steps=20, lam=3, overshoot=0.02)

    def pixle(model: Any) -> Any:
        import torchattacks

        # single-pixel patches (an L0 setting): each restart adds at most one patch, so restarts bound
        # its L0; 40 x 5 rather than 50 x 20, which took more than 20 s per MNIST image here
        return torchattacks.Pixle(model, x_dimensions=(1, 1), y_dimensions=(1, 1), restarts=40, max_iterations=5)

    def onepixel(model: Any) -> Any:
        import torchattacks

        return torchattacks.OnePixel(model, pixels=1, steps=10, popsize=10)

    torch.set_num_threads(2)
    return {
        "sigma-zero": sigma_zero,
        "fmn-l0": fmn_l0,
        "foolbox-pointwise": _foolbox(pointwise),
        "foolbox-salt-pepper": _foolbox(salt_pepper),
        "sparsefool": _ta(sparsefool),
        "pixle": _ta(pixle),
        "onepixel": _ta(onepixel),
    }


# --- judging --------------------------------------------------------------------------------------


def judge(clf: Any, data: Any, x_adv: np.ndarray) -> list[int | None]:
    """Pixel L0 of each example that is in range and flips the ONNX model's class; None otherwise."""
    lo, hi = clf.card.range
    out: list[int | None] = []
    pred = clf.predict(x_adv.astype(np.float32))
    for x, a, y, p in zip(data.x, x_adv, data.y, pred):
        ok = np.all(np.isfinite(a)) and np.all(a >= lo) and np.all(a <= hi) and int(p) != int(y)
        out.append(int((np.abs(a - x) > MOVED).any(axis=-1).sum()) if ok else None)
    return out


def to_canonical(clf: Any, adv_nchw: np.ndarray) -> np.ndarray:
    """NCHW [0, 1] images (the twins' input) to l0tre's canonical [N, P, C] data space."""
    n, c = adv_nchw.shape[0], adv_nchw.shape[1]
    return adv_nchw.reshape(n, c, -1).transpose(0, 2, 1).astype(np.float32)


def to_nchw(clf: Any, x: np.ndarray) -> np.ndarray:
    n, p, c = x.shape
    h, w = clf.geometry.image_shape
    return x.transpose(0, 2, 1).reshape(n, c, h, w).astype(np.float32)


def summary(l0: list[int | None], seconds: list[float]) -> dict[str, Any]:
    found = [v for v in l0 if v is not None]
    return {
        "success_rate": len(found) / len(l0) if l0 else 0.0,
        "mean_l0": float(np.mean(found)) if found else None,
        "median_l0": float(np.median(found)) if found else None,
        "seconds_per_image": float(np.median(seconds)) if seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / "zoo")
    parser.add_argument("--zoo-script", type=Path, default=ROOT / "scripts" / "zoo.py")
    parser.add_argument("--peers", default=None, help="comma-separated subset of the peers")
    parser.add_argument("--steps", type=int, default=1000, help="steps of sigma-zero, FMN-L0 and salt-and-pepper")
    parser.add_argument("--budget", type=int, default=None, help="l0tre attack: random-search evaluations per image (default: the attack's)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None,
                        help="JSON of an earlier run: take the peers' judged examples from it, run only l0tre")
    args = parser.parse_args()

    import torch

    from l0tre_attack.run import run_attack
    from l0tre_core import load_model

    torch.manual_seed(0)
    peers = peer_attacks(args.steps)
    chosen = list(peers) if args.peers is None else args.peers.split(",")
    report: dict[str, Any] = {"n": args.n, "models": {}}
    earlier = json.loads(args.reuse.read_text())["models"] if args.reuse else {}
    for name in args.models.split(","):
        path, twin, _ = load_pair(name, args.zoo, args.zoo_script)
        clf = load_model(path)
        data = load_images(clf, name, args.zoo, args.n)
        x = torch.from_numpy(to_nchw(clf, data.x))
        y = torch.from_numpy(data.y.astype(np.int64))
        with torch.no_grad():
            twin_gap = float((twin(x).numpy() - clf.outputs(data.x)).__abs__().max())
        rows: dict[str, dict[str, Any]] = {}
        per_image: dict[str, list[int | None]] = {}

        result = run_attack(clf, data, **({} if args.budget is None else {"budget": args.budget}), seed=0, device="cpu")
        per_image["l0tre"] = judge(clf, data, np.stack([
            r.witness.apply(data.x[i]) if r.witness is not None else data.x[i] for i, r in enumerate(result.records)]))
        rows["l0tre"] = summary(per_image["l0tre"], [r.seconds for r in result.records])
        print(f"[{name}] l0tre: {rows['l0tre']}", flush=True)
        for peer in chosen:
            if name in earlier and peer in earlier[name]["per_image"]:
                per_image[peer] = earlier[name]["per_image"][peer]
                rows[peer] = earlier[name]["attacks"][peer]
                print(f"[{name}] {peer} (from {args.reuse}): {rows[peer]}", flush=True)
                continue
            started = time.perf_counter()
            try:
                adv = peers[peer](twin, x.clone(), y.clone())
                adv_np = adv.detach().cpu().numpy() if hasattr(adv, "detach") else np.asarray(adv)
                err = None
            except Exception as exc:  # a peer that crashes is reported, not fatal
                adv_np, err = to_nchw(clf, data.x), f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            took = (time.perf_counter() - started) / len(data.x)
            per_image[peer] = judge(clf, data, to_canonical(clf, adv_np))
            rows[peer] = summary(per_image[peer], [took])
            if err:
                rows[peer]["error"] = err
            print(f"[{name}] {peer}: {rows[peer]}", flush=True)
            if args.json:  # after every peer: a long run cut short keeps what it measured (--reuse)
                partial = dict(report["models"])
                partial[name] = {"attacks": rows, "per_image": per_image, "partial": True}
                args.json.write_text(json.dumps({**report, "models": {**earlier, **partial}}, indent=1))

        best = [min((per_image[p][i] for p in chosen if per_image[p][i] is not None), default=None)
                for i in range(len(data.x))]
        ours = per_image["l0tre"]
        both = [i for i in range(len(best)) if best[i] is not None]
        report["models"][name] = {
            "images": len(data.x),
            "twin_max_logit_gap": twin_gap,
            "attacks": rows,
            "per_image_best_of_peers": {
                "mean_l0": float(np.mean([best[i] for i in both])) if both else None,
                "l0tre_mean_l0_on_same_images": float(np.mean([ours[i] if ours[i] is not None else math.inf for i in both])) if both else None,
                "l0tre_at_or_below_best": int(sum(ours[i] is not None and ours[i] <= best[i] for i in both)),
                "images_with_a_peer_success": len(both),
            },
            "per_image": {k: v for k, v in per_image.items()},
        }
        print(f"[{name}] per-image best of peers: {report['models'][name]['per_image_best_of_peers']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
