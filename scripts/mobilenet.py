"""Write a MobileNet-class ImageNet-shaped ONNX classifier (224x224x3 -> 1000 logits), in plain
torch (no torchvision: its wheels do not load next to the CPU torch here), with a few inputs.

    python scripts/mobilenet.py OUT_DIR [--arch mobilenetv2|tiny] [--width 1.0] [--classes 1000] [--inputs 4] [--seed 0]

Writes ``OUT_DIR/{arch}_w{width}.onnx`` (NCHW input ``image`` [N, 3, 224, 224], values in
[0, 1], the ImageNet normalisation inside the graph) and ``OUT_DIR/images224.npz`` (``x`` [n, 224,
224, 3] in [0, 1]; no labels, as the weights are not trained: the model's predictions are the references).

**The weights are not trained.** Pretrained weights cannot be downloaded here. The network is
MobileNetV2 (Sandler et al. 2018: inverted residual blocks, ReLU6, width multiplier) with
PyTorch's default random initialisation from ``--seed``, and each BatchNorm's running statistics
calibrated on 32 synthetic images (so activations keep a sane scale and the logits differ between
inputs); BatchNorm is folded into the convolutions by the ONNX export (eval mode). It has the
shape, operators and cost of the real model (about 300 MFLOPs (multiply-adds) at width 1.0, 59 at
0.35), which is what the saliency benchmark measures; its decisions mean nothing. ``--arch tiny`` is
the smaller model for two cores (about 6 M multiply-adds; see ``TinyMobileNet``).

Run it with a virtualenv that has torch (``pip install torch==2.13.0 numpy onnx onnxruntime``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # expansion t, channels c, repeats n, first stride s (the paper's table 2)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, classes: int = 1000) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features((image - self.mean) / self.std)
        return self.classifier(x.mean(dim=(2, 3)))


class TinyMobileNet(nn.Module):
    """The smaller model for the two-core benchmark: MobileNet's depthwise-separable blocks, a
    stride-2 stem and five stride-2 blocks (224 -> 7), then global average pooling: about 6 M
    multiply-adds at width 1, 50 times less than MobileNetV2, on the same 224x224x3 input."""

    def __init__(self, width: float = 1.0, classes: int = 1000) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        chans = [make_divisible(c * width) for c in (8, 16, 32, 64, 128, 256)]
        layers: list[nn.Module] = [conv_bn(3, chans[0], 3, 2)]
        for cin, cout in zip(chans, chans[1:]):
            layers += [conv_bn(cin, cin, 3, 2, groups=cin), conv_bn(cin, cout, 1, 1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(chans[-1], classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features((image - self.mean) / self.std)
        return self.classifier(x.mean(dim=(2, 3)))


def synthetic_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random colour images in [0, 1], [n, 224, 224, 3]: low-frequency blobs plus a few
    bright and dark rectangles, so that pixels differ in importance."""
    coarse = rng.uniform(0, 1, (n, 3, 14, 14)).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(224, 224), mode="bicubic", align_corners=False)
    img = img.clamp(0, 1).permute(0, 2, 3, 1).numpy().copy()
    for k in range(n):
        for _ in range(3):
            r, c = rng.integers(0, 180, 2)
            h, w = rng.integers(16, 44, 2)
            img[k, r : r + h, c : c + w] = rng.uniform(0, 1, 3)
    return img.astype(np.float32)


def macs(model: nn.Module) -> int:
    """Multiply-adds of one 224x224 forward pass (convolutions and the classifier)."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description="MobileNetV2 (random weights, calibrated BatchNorm) as ONNX, with 224x224x3 inputs")
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", choices=("mobilenetv2", "tiny"), default="mobilenetv2")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = (MobileNetV2 if args.arch == "mobilenetv2" else TinyMobileNet)(args.width, args.classes)
    # calibrate BatchNorm on synthetic images (train mode updates running stats; no weight is learned)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(4):
            model(torch.from_numpy(synthetic_images(8, rng)).permute(0, 3, 1, 2))
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.arch}_w{args.width:g}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    x = synthetic_images(args.inputs, np.random.default_rng(args.seed + 1))
    with torch.no_grad():
        y = model(torch.from_numpy(x).permute(0, 3, 1, 2)).argmax(1).numpy()
    np.savez(args.out / "images224.npz", x=x)  # no labels: the model's own predictions are the references
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: {args.arch} width {args.width:g}, {params / 1e6:.2f} M parameters, "
          f"{macs(model) / 1e6:.0f} M multiply-adds per image, random weights (seed {args.seed}), BatchNorm calibrated; "
          f"{args.inputs} synthetic inputs in {args.out / 'images224.npz'} (the model predicts {y.tolist()})")


if __name__ == "__main__":
    main()
