"""Train and export the benchmark model zoo: MNIST MLP / ConvSmall / max-pooling CNN and a small
3x32x32 ResNet, each plain and L-infinity PGD trained.

torch is never a dependency of l0tre, so this runs in a virtualenv of its own:

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.13.0 numpy onnx onnxruntime
    apt-get install -y dataset-fashion-mnist        # the 3x32x32 models' images
    nice -n 5 /work/torchenv/bin/python scripts/zoo.py [--only NAME ...]

Other benchmarks import this module for the networks and their trained twins::

    from zoo import ARCHITECTURES, build, load_twin   # with scripts/ on sys.path
    net = load_twin("mnist_convsmall_pgd")             # eval mode, weights from benchmarks/zoo/

Data.
  MNIST: only the t10k set is on these machines (/work/shared/data/mnist). As in
  scripts/train_demo.py, models train on t10k images 0-7999 and are scored on 8000-9999.
  3x32x32: Fashion-MNIST from the Debian package dataset-fashion-mnist (no CIFAR-10 is
  reachable from here). Each 28x28 grey image is zero-padded by 2 on every side to 32x32 and
  repeated into 3 identical channels. Models train on its train set and are scored on its
  10,000 test images.

Inputs are raw pixels in [0, 1], NCHW. The MNIST models take them as they are. The ResNet takes
normalised input (x - mean) / std with the normalisation NOT in the graph: mean and std are in
its model card, as a user gives them with --mean/--std.

Each model NAME writes into benchmarks/zoo/: NAME.onnx (dynamic batch, l0tre.* metadata),
NAME.onnx.l0tre.json (its model card), NAME.pt (the torch state_dict) and the README.md with
held-out accuracies measured in onnxruntime on the exported files; fashion32_test_200.npz holds
the first 200 held-out 3x32x32 images (uint8, H,W,C) as a data file for the benchmarks. Seeds are fixed and training
uses two threads.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = ROOT / "benchmarks" / "zoo"
MNIST_DIR = Path("/work/shared/data/mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
OPSET = 17
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


# --- networks ---------------------------------------------------------------------------------


class MnistMLP(nn.Module):
    """784-256-256-10 ReLU MLP on [N,1,28,28] images (flattened in the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                                    nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MnistConvSmall(nn.Module):
    """ERAN's ConvSmall: Conv16 4x4/2, Conv32 4x4/2 (no padding), FC100, FC10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(),  # 28 -> 13
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),  # 13 -> 5
            nn.Flatten(), nn.Linear(32 * 5 * 5, 100), nn.ReLU(), nn.Linear(100, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MnistMaxPool(nn.Module):
    """Conv8 3x3 (pad 1), MaxPool 2, Conv16 3x3 (pad 1), MaxPool 2, FC64, FC10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
            nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class PreActBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(bn(conv(relu(bn(x)))))).

    Pre-activation keeps BatchNormalization nodes in the exported graph: the first BN reads a
    tensor the residual Add also reads, so the exporter cannot fold it into a convolution.
    A block that changes width or stride projects its shortcut with a 1x1 convolution.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + (x if self.shortcut is None else self.shortcut(a))


class SmallResNet(nn.Module):
    """Stem Conv16 3x3/2, two pre-activation residual blocks (16 -> 16, 16 -> 32 stride 2),
    BN + ReLU, AveragePool 2, FC10 on normalised [N,3,32,32] input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)  # 32 -> 16
        self.block1 = PreActBlock(16, 16, 1)
        self.block2 = PreActBlock(16, 32, 2)  # 16 -> 8
        self.bn = nn.BatchNorm2d(32)
        self.pool = nn.AvgPool2d(2)  # 8 -> 4
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(F.relu(self.bn(h))), 1))


@dataclass(frozen=True)
class Spec:
    """One zoo model: its network, data set, adversarial training and conventions."""

    build: Callable[[], nn.Module]
    data: str  # "mnist" or "fashion32"
    pgd_eps: float  # 0: plain training; else L-inf PGD radius in [0,1] pixel units
    epochs: int
    seed: int
    summary: str
    train_subset: int | None = None  # first N training images (PGD's cost is 11 passes a step)
    init_from: str | None = None  # start from this zoo model's trained weights (adversarial fine-tuning)
    lr: float = 2e-3


_MLP = "MLP 784-256-256-10 (ReLU); input [N,1,28,28] NCHW, raw pixels in [0,1]; logits"
_CONVSMALL = ("ConvSmall: Conv16 4x4/2, Conv32 4x4/2, FC100, FC10 (ReLU, no padding); input "
              "[N,1,28,28] NCHW, raw pixels in [0,1]; logits")
_MAXPOOL = ("Conv8 3x3 pad 1, MaxPool 2, Conv16 3x3 pad 1, MaxPool 2, FC64, FC10 (ReLU); input "
            "[N,1,28,28] NCHW, raw pixels in [0,1]; logits")
_RESNET = ("pre-activation ResNet: stem Conv16 3x3/2, residual blocks 16->16 and 16->32 (stride 2, "
           "1x1 projection) with BatchNorm and residual Adds, BN+ReLU, AveragePool 2, FC10; input "
           "[N,3,32,32] NCHW, EXPECTS (x-mean)/std with x in [0,1], normalisation NOT in the graph "
           "(mean/std in the card); logits")

ARCHITECTURES: dict[str, Spec] = {
    "mnist_mlp": Spec(MnistMLP, "mnist", 0.0, 10, 11, _MLP),
    "mnist_mlp_pgd": Spec(MnistMLP, "mnist", 0.1, 8, 12, _MLP),
    "mnist_convsmall": Spec(MnistConvSmall, "mnist", 0.0, 10, 13, _CONVSMALL),
    "mnist_convsmall_pgd": Spec(MnistConvSmall, "mnist", 0.1, 4, 14, _CONVSMALL),
    "mnist_maxpool": Spec(MnistMaxPool, "mnist", 0.0, 8, 15, _MAXPOOL),
    "mnist_maxpool_pgd": Spec(MnistMaxPool, "mnist", 0.1, 3, 16, _MAXPOOL),
    "fmnist_resnet": Spec(SmallResNet, "fashion32", 0.0, 3, 17, _RESNET, train_subset=20000),
    # PGD fine-tuning of the plain ResNet: PGD training from scratch did not fit the two shared cores
    "fmnist_resnet_pgd": Spec(SmallResNet, "fashion32", 2 / 255, 1, 18, _RESNET, train_subset=3000,
                              init_from="fmnist_resnet", lr=5e-4),
}


def build(name: str) -> nn.Module:
    """A freshly initialised network of the zoo model ``name``."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name].build()


def load_twin(name: str, zoo_dir: Path = ZOO_DIR) -> nn.Module:
    """The trained PyTorch twin of ``zoo_dir/NAME.onnx`` (same weights, eval mode).

    Its input convention is the ONNX file's: the ResNet twin expects normalised input too.
    """
    net = build(name)
    net.load_state_dict(torch.load(zoo_dir / f"{name}.pt", map_location="cpu", weights_only=True))
    return net.eval()


# --- data -------------------------------------------------------------------------------------


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@dataclass
class DataSet:
    """uint8 images [N,C,H,W] and int64 labels, split into training and held-out parts."""

    train_x: np.ndarray
    train_y: np.ndarray
    held_x: np.ndarray
    held_y: np.ndarray
    mean: float | None  # per-channel normalisation (all channels equal here); None: raw pixels
    std: float | None
    classes: list[str]
    provenance: dict[str, str]


def load_mnist(mnist_dir: Path = MNIST_DIR) -> DataSet:
    x = _idx(mnist_dir / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y = _idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return DataSet(x[:8000], y[:8000], x[8000:], y[8000:], None, None, MNIST_CLASSES,
                   {"train_images": "MNIST t10k 0-7999", "heldout_images": "MNIST t10k 8000-9999"})


def _pad32_rgb(x: np.ndarray) -> np.ndarray:
    """[N,28,28] grey -> [N,3,32,32]: zero padding of 2 on each side, three identical channels."""
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1)


def load_fashion32(fashion_dir: Path = FASHION_DIR) -> DataSet:
    if not (fashion_dir / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"no Fashion-MNIST in {fashion_dir}: apt-get install -y dataset-fashion-mnist")
    tx = _idx(fashion_dir / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    ty = _idx(fashion_dir / "train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    hx = _idx(fashion_dir / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    hy = _idx(fashion_dir / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    train = _pad32_rgb(tx)
    scaled = train.astype(np.float64) / 255.0
    # Statistics of the padded training images, rounded so the card states them exactly.
    mean, std = round(float(scaled.mean()), 4), round(float(scaled.std()), 4)
    return DataSet(train, ty, _pad32_rgb(hx), hy, mean, std, FASHION_CLASSES,
                   {"train_images": "Fashion-MNIST train (Debian dataset-fashion-mnist), padded to "
                    "32x32, 3 equal channels", "heldout_images": "Fashion-MNIST t10k 0-9999, same "
                    "padding"})


def model_input(data: DataSet, images: np.ndarray) -> np.ndarray:
    """uint8 images -> the float32 tensor the exported model takes."""
    x = images.astype(np.float32) / 255.0
    if data.mean is not None and data.std is not None:
        x = (x - np.float32(data.mean)) / np.float32(data.std)
    return x.astype(np.float32)


# --- training ---------------------------------------------------------------------------------


def pgd(net: nn.Module, x01: Tensor, y: Tensor, eps: float, steps: int, norm: Callable[[Tensor], Tensor],
        gen: torch.Generator) -> Tensor:
    """L-inf PGD in [0,1] pixel space from a random start; step 2.5 eps / steps (Madry et al.)."""
    alpha = 2.5 * eps / steps
    delta = (torch.rand(x01.shape, generator=gen) * 2 - 1) * eps
    delta = (x01 + delta).clamp(0, 1) - x01
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(net(norm(x01 + delta)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x01 + delta).clamp(0, 1) - x01
    return (x01 + delta).detach()


def train(spec: Spec, data: DataSet) -> nn.Module:
    """Adam with cosine decay; PGD models train on half clean, half PGD-10 loss, so a few
    epochs on two cores still give a usable clean accuracy."""
    torch.manual_seed(spec.seed)
    net = spec.build()
    if spec.init_from is not None:
        net.load_state_dict(torch.load(ZOO_DIR / f"{spec.init_from}.pt", map_location="cpu", weights_only=True))
    n = spec.train_subset or len(data.train_x)
    x01 = torch.from_numpy(data.train_x[:n].astype(np.float32) / 255.0)
    y = torch.from_numpy(data.train_y[:n])
    mean, std = data.mean, data.std

    def norm(t: Tensor) -> Tensor:
        return t if mean is None or std is None else (t - mean) / std

    batch = 64 if spec.data == "mnist" else 128
    steps = spec.epochs * ((n + batch - 1) // batch)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(spec.seed)
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb, yb = x01[idx], y[idx]
            if spec.pgd_eps > 0:
                net.eval()  # attack the network as it is, without moving BatchNorm statistics
                adv = pgd(net, xb, yb, spec.pgd_eps, 10, norm, gen)
                net.train()
                loss = 0.5 * F.cross_entropy(net(norm(xb)), yb) + 0.5 * F.cross_entropy(net(norm(adv)), yb)
            else:
                net.train()
                loss = F.cross_entropy(net(norm(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def pgd_accuracy(net: nn.Module, data: DataSet, eps: float, count: int, seed: int) -> float:
    """Accuracy under PGD-10 at ``eps`` on the first ``count`` held-out images (torch twin)."""
    x01 = torch.from_numpy(data.held_x[:count].astype(np.float32) / 255.0)
    y = torch.from_numpy(data.held_y[:count])
    mean, std = data.mean, data.std

    def norm(t: Tensor) -> Tensor:
        return t if mean is None or std is None else (t - mean) / std

    adv = pgd(net, x01, y, eps, 10, norm, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return 100.0 * float((net(norm(adv)).argmax(1) == y).float().mean())


# --- export -----------------------------------------------------------------------------------


def card_for(name: str, spec: Spec, data: DataSet, accuracy: float, extra: dict[str, object]) -> dict[str, object]:
    card: dict[str, object] = {"layout": "nchw", "range": [0, 1], "output": "logits", "classes": data.classes}
    if data.mean is not None and data.std is not None:
        card["mean"] = [data.mean] * 3
        card["std"] = [data.std] * 3
    card["description"] = (f"{name}: {spec.summary}. Trained by scripts/zoo.py; held-out accuracy "
                           f"{accuracy:.2f}% (onnxruntime).")
    card["_training"] = {**data.provenance, "heldout_accuracy": round(accuracy, 2), "epochs": spec.epochs,
                         "seed": spec.seed, "pgd_linf_eps": spec.pgd_eps,
                         "train_subset": spec.train_subset, "init_from": spec.init_from, **extra}
    return card


def export(name: str, net: nn.Module, example: np.ndarray, card: dict[str, object]) -> Path:
    """Legacy (TorchScript) exporter, dynamic batch, card both as sidecar and as l0tre.* metadata."""
    import onnx

    path = ZOO_DIR / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(example),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    proto = onnx.load(str(path))
    meta = {"l0tre.layout": "nchw", "l0tre.range": "0,1", "l0tre.output": "logits",
            "l0tre.classes": ",".join(str(c) for c in card["classes"])}  # type: ignore[union-attr]
    if "mean" in card:
        meta["l0tre.mean"] = ",".join(str(v) for v in card["mean"])  # type: ignore[union-attr]
        meta["l0tre.std"] = ",".join(str(v) for v in card["std"])  # type: ignore[union-attr]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    (ZOO_DIR / f"{name}.onnx.l0tre.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


def onnx_accuracy(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    preds = np.concatenate([session.run(None, {"image": inputs[i : i + 1000]})[0].argmax(1)
                            for i in range(0, len(inputs), 1000)])
    return 100.0 * float(np.mean(preds == labels))


def graph_ops(path: Path) -> list[str]:
    import onnx

    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def make(name: str, data: DataSet) -> dict[str, object]:
    spec = ARCHITECTURES[name]
    started = time.perf_counter()
    net = train(spec, data)
    held = model_input(data, data.held_x)
    with torch.no_grad():
        torch_acc = 100.0 * float((net(torch.from_numpy(held)).argmax(1).numpy() == data.held_y).mean())
    eps = 0.1 if spec.data == "mnist" else 2 / 255
    robust = pgd_accuracy(net, data, eps, 1000, spec.seed)
    torch.save(net.state_dict(), ZOO_DIR / f"{name}.pt")
    # The card needs the accuracy of the file, so export once, measure, then write the card.
    path = export(name, net, held[:1], card_for(name, spec, data, torch_acc, {}))
    acc = onnx_accuracy(path, held, data.held_y)
    if abs(acc - torch_acc) > 0.1:  # float32 reorderings may flip a near-tie, nothing more
        raise SystemExit(f"{name}: onnxruntime accuracy {acc:.2f}% != torch {torch_acc:.2f}%")
    extra = {"pgd10_accuracy_first_1000": round(robust, 1), "pgd10_eps": round(eps, 6)}
    export(name, net, held[:1], card_for(name, spec, data, acc, extra))
    seconds = time.perf_counter() - started
    row = {"name": name, "accuracy": acc, "pgd_accuracy": robust, "pgd_eval_eps": eps, "seconds": seconds,
           "kib": path.stat().st_size / 1024, "ops": graph_ops(path), "summary": spec.summary,
           "epochs": spec.epochs, "seed": spec.seed, "train_eps": spec.pgd_eps, "subset": spec.train_subset}
    print(f"{name}: held-out {acc:.2f}% (torch {torch_acc:.2f}%), PGD-10 eps {eps:.4f} {robust:.1f}%, "
          f"{row['kib']:.0f} KiB, {seconds:.0f} s", flush=True)
    return row


def write_readme(rows: list[dict[str, object]]) -> None:
    lines = [
        "# Benchmark model zoo",
        "",
        "Generated by `scripts/zoo.py` (do not edit by hand; rerun it). Each `NAME.onnx` has a",
        "dynamic batch and its model card in `NAME.onnx.l0tre.json`; `NAME.pt` is the PyTorch",
        "state_dict of the same network (`scripts/zoo.py: load_twin(NAME)`).",
        "",
        "Data:",
        "- `mnist_*`: MNIST t10k images 0-7999 for training, 8000-9999 held out (only t10k is on",
        "  these machines). Input: raw pixels in [0, 1].",
        "- `fmnist_*`: **Fashion-MNIST**, not CIFAR-10 (unreachable here), from the Debian package",
        "  `dataset-fashion-mnist`: each 28x28 grey image zero-padded to 32x32 and repeated into 3",
        "  identical channels. Training on (a prefix of) its train set, held out: its 10,000 test",
        "  images. Input: `(x - mean) / std` with x in [0, 1]; the normalisation is **not** in the",
        "  graph (mean/std in the card, pass them as `--mean/--std` or let the card supply them).",
        "",
        "`_pgd` models: L-infinity PGD training (10 steps, step 2.5 eps/10, random start; loss half",
        "clean, half adversarial) at eps 0.1 (MNIST) or 2/255 (3x32x32); `fmnist_resnet_pgd` is",
        "PGD fine-tuning of `fmnist_resnet` (1 epoch on 3,000 images, lr 5e-4): PGD training from",
        "scratch did not fit the two shared cores. Accuracy is measured with",
        "onnxruntime on the exported file on all held-out images; PGD-10 accuracy with the torch",
        "twin on the first 1,000 held-out images at eps 0.1 (MNIST) / 2/255 (3x32x32).",
        "",
        "| model | architecture | held-out acc. | PGD-10 acc. | epochs (subset) | seed | ONNX ops | KiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        subset = f" ({r['subset']})" if r["subset"] else ""
        lines.append(f"| `{r['name']}` | {r['summary']} | {r['accuracy']:.2f}% | {r['pgd_accuracy']:.1f}% | "
                     f"{r['epochs']}{subset} | {r['seed']} | {', '.join(r['ops'])} | {r['kib']:.0f} |")  # type: ignore[arg-type]
    lines += ["", "Training times (two threads, shared machine): "
              + ", ".join(f"{r['name']} {r['seconds']:.0f} s" for r in rows) + "."]
    (ZOO_DIR / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_fashion_sample(data: DataSet, count: int = 200) -> Path:
    """The first ``count`` held-out 3x32x32 images as an l0tre data file (uint8 H,W,C, labels),
    so benchmarks feed the ResNets the same images the README's accuracy is measured on."""
    path = ZOO_DIR / f"fashion32_test_{count}.npz"
    np.savez_compressed(path, x=np.ascontiguousarray(data.held_x[:count].transpose(0, 2, 3, 1)),
                        y=data.held_y[:count].astype(np.int64))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(ARCHITECTURES), help="train only these models")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ZOO_DIR.mkdir(parents=True, exist_ok=True)
    names = args.only or list(ARCHITECTURES)
    loaded: dict[str, DataSet] = {}
    rows_path = ZOO_DIR / "rows.json"
    rows = {r["name"]: r for r in json.loads(rows_path.read_text())} if rows_path.exists() else {}
    for name in names:
        kind = ARCHITECTURES[name].data
        if kind not in loaded:
            loaded[kind] = load_mnist() if kind == "mnist" else load_fashion32()
            if kind == "fashion32":
                write_fashion_sample(loaded[kind])
        rows[name] = make(name, loaded[kind])
        # Rows kept between runs so --only retrains one model without losing the others' lines.
        ordered = [rows[n] for n in ARCHITECTURES if n in rows]
        rows_path.write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
        write_readme(ordered)


if __name__ == "__main__":
    main()
