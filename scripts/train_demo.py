"""Train and export l0tre's demo model and the "unseen" MNIST test models.

torch is never a dependency of l0tre, so this script runs in a virtualenv of its own:

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.13.0 numpy onnx onnxruntime
    /work/torchenv/bin/python scripts/train_demo.py [--mnist-dir DIR]

Every model trains on MNIST test images 0-7999 (t10k) and is scored on 8000-9999, which no model
ever sees in training. The demo's held-out data file is drawn from that held-out range too, so the
demo never measures robustness on training images. Accuracies are measured with onnxruntime on
the exported files, not with torch, because the files are what l0tre reads. Seeds are fixed and
training uses two threads, so a rerun on the same torch version gives the same weights.

Writes:
  l0tre_core/demo/mnist_cnn.onnx               the demo CNN (dynamic batch, card in its metadata)
  l0tre_core/demo/mnist_cnn.onnx.l0tre.json    its sidecar model card
  l0tre_core/demo/mnist_heldout_500.npz        t10k images 8000-8499 (uint8) and labels
  benchmarks/models/mnist_cnn.pt               the demo CNN's state_dict (for side-by-side benchmarks)
  tests/data/models/*.onnx, README.md          models with other shapes, layouts and conventions
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "l0tre_core" / "demo"
BENCH_MODELS_DIR = ROOT / "benchmarks" / "models"
TEST_MODELS_DIR = ROOT / "tests" / "data" / "models"
DEFAULT_MNIST_DIR = Path("/work/shared/data/mnist")

TRAIN = slice(0, 8000)
HELDOUT = slice(8000, 10000)
DEMO_DATA = slice(8000, 8500)
OPSET = 17
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CLASSES = [str(d) for d in range(10)]


# --- data -------------------------------------------------------------------------------------


def load_mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8 [N,28,28]) and labels (int64 [N]) from the IDX files."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    if images.shape[0] != 10_000 or labels.shape[0] != 10_000:
        raise SystemExit(f"expected 10000 MNIST test images and labels in {mnist_dir}")
    return images, labels


# Each model declares how uint8 images become its input. These are the only conventions used.
def nchw(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[:, None, :, :]


def nhwc(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[:, :, :, None]


def flat(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0).reshape(len(x), -1)


def nchw_normalised(x: np.ndarray) -> np.ndarray:
    return (nchw(x) - MNIST_MEAN) / MNIST_STD


# --- networks ---------------------------------------------------------------------------------


def load_demo_cnn_class() -> type[nn.Module]:
    """The demo CNN class from benchmarks/models/demo_cnn.py.

    Imported from that file rather than redefined here, so the benchmarks rebuild exactly the
    network whose weights this script saves.
    """
    spec = importlib.util.spec_from_file_location("demo_cnn", BENCH_MODELS_DIR / "demo_cnn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DemoCNN


class MLP(nn.Module):
    """784-100-100-10 on flattened images."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MaxPoolCNN(nn.Module):
    """A CNN with max-pooling whose exported graph flattens with the batch size baked in."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 26 -> 13
            nn.Conv2d(8, 16, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2),  # 13 -> 11 -> 5
        )
        self.fc = nn.Linear(16 * 5 * 5, 10)
        # None while training; set to 1 before export so the graph holds Reshape(x, [1, -1]),
        # a constant shape that breaks on any other batch size, like many models in the wild.
        self.fixed_batch: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.fixed_batch is None:
            return self.fc(h.flatten(1))
        return self.fc(h.reshape(self.fixed_batch, -1))


class NHWCSoftmax(nn.Module):
    """Wraps an NCHW logits network into one that takes NHWC images and returns probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.net(x.permute(0, 3, 1, 2)), dim=1)


def with_fixed_batch(net: nn.Module) -> nn.Module:
    net.fixed_batch = 1
    return net


# --- training and export ----------------------------------------------------------------------


@dataclass
class Job:
    """One model to train and export.

    The network trains on ``prepare(images)`` with a cross-entropy loss, so it must output
    logits; ``wrap`` then turns it into the module that is exported (adding a layout change or a
    softmax), and ``export_input`` is how images become the exported model's input.
    """

    path: Path
    build: Callable[[], nn.Module]
    prepare: Callable[[np.ndarray], np.ndarray]
    input_name: str
    output_name: str
    dynamic_batch: bool
    epochs: int
    seed: int  # distinct per model, so models of the same architecture get different weights
    summary: str  # architecture, input and output conventions, for the README
    wrap: Callable[[nn.Module], nn.Module] = lambda net: net
    export_input: Callable[[np.ndarray], np.ndarray] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def train(job: Job, images: np.ndarray, labels: np.ndarray) -> nn.Module:
    """Adam with a cosine learning-rate decay; seeded so the weights are reproducible."""
    torch.manual_seed(job.seed)  # also fixes the initial weights built just below
    net = job.build()
    x = torch.from_numpy(job.prepare(images))
    y = torch.from_numpy(labels)
    batch_size = 64
    steps = job.epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    order = torch.Generator().manual_seed(job.seed)
    net.train()
    for _ in range(job.epochs):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


def torch_predictions(net: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(inputs)).argmax(dim=1).numpy()


def export(job: Job, module: nn.Module, example: np.ndarray) -> None:
    """Export with the TorchScript-based exporter and attach the l0tre.* metadata.

    ``dynamo=False``: the default torch.export-based exporter in torch 2.13 needs onnxscript, and
    the older exporter writes a plain graph of standard ops with the weights inline, which is
    what we want in small files that tests read. Without ``dynamic_axes`` every shape is static,
    which is how the fixed-batch models get their fixed batch.
    """
    dynamic_axes = None
    if job.dynamic_batch:
        dynamic_axes = {job.input_name: {0: "N"}, job.output_name: {0: "N"}}
    job.path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            str(job.path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[job.input_name],
            output_names=[job.output_name],
            dynamic_axes=dynamic_axes,
        )
    proto = onnx.load(str(job.path))
    for key, value in job.metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(job.path))


def onnx_predictions(path: Path, inputs: np.ndarray, batch: int | None) -> np.ndarray:
    """Predicted classes from onnxruntime, feeding ``batch`` images per run (None: all at once)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    step = batch or len(inputs)
    outputs = [session.run(None, {name: inputs[i : i + step]})[0] for i in range(0, len(inputs), step)]
    return np.concatenate(outputs).argmax(axis=1)


def check_rejects_batch_of_two(path: Path, one: np.ndarray) -> None:
    """A fixed-batch model is only useful to the tests if onnxruntime really refuses batch 2."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    try:
        session.run(None, {name: np.concatenate([one, one])})
    except InvalidArgument:
        return
    raise SystemExit(f"{path.name}: onnxruntime accepted a batch of 2; the batch is not fixed")


@dataclass
class Result:
    job: Job
    net: nn.Module  # the trained logits network, before wrapping
    torch_accuracy: float
    onnx_accuracy: float  # percent, on t10k 8000-9999
    seconds: float


def run(job: Job, images: np.ndarray, labels: np.ndarray) -> Result:
    started = time.perf_counter()
    net = train(job, images[TRAIN], labels[TRAIN])
    held_x, held_y = images[HELDOUT], labels[HELDOUT]
    torch_acc = 100.0 * float(np.mean(torch_predictions(net, job.prepare(held_x)) == held_y))

    export_input = job.export_input or job.prepare
    export(job, job.wrap(net), export_input(held_x[:1]))
    onnx_pred = onnx_predictions(job.path, export_input(held_x), None if job.dynamic_batch else 1)
    onnx_acc = 100.0 * float(np.mean(onnx_pred == held_y))
    # float32 reorderings may flip a near-tie, nothing more.
    if abs(onnx_acc - torch_acc) > 0.1:
        raise SystemExit(f"{job.path.name}: onnxruntime accuracy {onnx_acc:.2f}% != torch {torch_acc:.2f}%")
    if not job.dynamic_batch:
        check_rejects_batch_of_two(job.path, export_input(held_x[:1]))
    seconds = time.perf_counter() - started
    print(f"{job.path.relative_to(ROOT)}: held-out accuracy {onnx_acc:.2f}% "
          f"(torch {torch_acc:.2f}%), {job.path.stat().st_size / 1024:.0f} KiB, {seconds:.0f} s")
    return Result(job, net, torch_acc, onnx_acc, seconds)


# --- the models -------------------------------------------------------------------------------


def demo_job() -> Job:
    # The card also goes into the ONNX metadata, so the model stays self-describing when copied
    # without its sidecar file.
    return Job(
        path=DEMO_DIR / "mnist_cnn.onnx",
        build=load_demo_cnn_class(),
        prepare=nchw,
        input_name="image",
        output_name="logits",
        dynamic_batch=True,
        epochs=12,
        seed=0,
        summary="demo CNN",
        metadata={
            "l0tre.layout": "nchw",
            "l0tre.range": "0,1",
            "l0tre.output": "logits",
            "l0tre.classes": ",".join(CLASSES),
        },
    )


def test_jobs() -> list[Job]:
    demo_cnn = load_demo_cnn_class()
    return [
        Job(
            path=TEST_MODELS_DIR / "mlp_b1.onnx",
            build=MLP,
            prepare=flat,
            input_name="x",
            output_name="logits",
            dynamic_batch=False,
            epochs=12,
            seed=1,
            summary="MLP 784-100-100-10 (ReLU); input `x` [1,784] FIXED batch (flattened 28x28, "
            "row-major); raw pixels in [0,1]; output [1,10] logits",
        ),
        Job(
            path=TEST_MODELS_DIR / "cnn_maxpool_b1.onnx",
            build=MaxPoolCNN,
            prepare=nchw,
            wrap=with_fixed_batch,
            input_name="image",
            output_name="logits",
            dynamic_batch=False,
            epochs=12,
            seed=2,
            summary="Conv(1->8,3x3)+ReLU, MaxPool2, Conv(8->16,3x3)+ReLU, MaxPool2, "
            "Reshape[1,-1], Linear(400->10); input [1,1,28,28] NCHW FIXED batch; raw pixels in "
            "[0,1]; output [1,10] logits",
        ),
        Job(
            path=TEST_MODELS_DIR / "cnn_nhwc.onnx",
            build=demo_cnn,
            prepare=nchw,
            wrap=NHWCSoftmax,
            export_input=nhwc,
            input_name="image",
            output_name="probs",
            dynamic_batch=True,
            epochs=12,
            seed=3,
            summary="Transpose NHWC->NCHW, then the demo CNN's architecture (own weights), then "
            "Softmax; input [N,28,28,1] NHWC dynamic batch; raw pixels in [0,1]; output [N,10] "
            "probabilities",
        ),
        Job(
            path=TEST_MODELS_DIR / "cnn_norm_outside.onnx",
            build=demo_cnn,
            prepare=nchw_normalised,
            input_name="image",
            output_name="logits",
            dynamic_batch=True,
            epochs=12,
            seed=4,
            summary="the demo CNN's architecture (own weights); input [N,1,28,28] NCHW dynamic "
            f"batch; EXPECTS normalised input (x-{MNIST_MEAN})/{MNIST_STD} with x in [0,1], "
            "normalisation NOT in the graph (card: mean=0.1307, std=0.3081); output [N,10] logits",
        ),
    ]


# --- the demo's other files -------------------------------------------------------------------


def write_demo_card(result: Result) -> None:
    acc = round(result.onnx_accuracy, 2)
    card = {
        "layout": "nchw",
        "range": [0, 1],
        "output": "logits",
        "classes": CLASSES,
        "description": "Small CNN trained by scripts/train_demo.py on MNIST test images 0-7999; "
        f"images 8000-9999 held out; held-out accuracy {acc}%.",
        # Underscored keys are ignored by the card loader: provenance for people only.
        "_training": {
            "train_images": "t10k 0-7999",
            "heldout_images": "t10k 8000-9999",
            "heldout_accuracy": acc,
            "epochs": result.job.epochs,
            "seed": result.job.seed,
        },
    }
    path = DEMO_DIR / "mnist_cnn.onnx.l0tre.json"
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def write_demo_data(images: np.ndarray, labels: np.ndarray) -> None:
    np.savez_compressed(
        DEMO_DIR / "mnist_heldout_500.npz",
        x=np.ascontiguousarray(images[DEMO_DATA], dtype=np.uint8),
        y=labels[DEMO_DATA].astype(np.int64),
    )


def write_demo_weights(result: Result) -> None:
    BENCH_MODELS_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(result.net.state_dict(), BENCH_MODELS_DIR / "mnist_cnn.pt")


def write_test_models_readme(results: list[Result]) -> None:
    lines = [
        "# MNIST test models",
        "",
        "Generated by `scripts/train_demo.py` (do not edit by hand). Each model trained on MNIST",
        "test images 0-7999 (t10k); accuracy is on t10k 8000-9999, measured with onnxruntime on",
        "the file. No model here has a sidecar card or `l0tre.*` metadata: the tests supply or",
        "infer the card, as a user would for a model l0tre has never seen.",
        "",
    ]
    for r in results:
        lines.append(f"- `{r.job.path.name}`: {r.job.summary}; held-out accuracy {r.onnx_accuracy:.2f}% "
                     f"({r.job.epochs} epochs, seed {r.job.seed}).")
    (TEST_MODELS_DIR / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST_DIR,
                        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    args = parser.parse_args()

    torch.set_num_threads(2)
    images, labels = load_mnist_test(args.mnist_dir)

    demo = run(demo_job(), images, labels)
    write_demo_card(demo)
    write_demo_data(images, labels)
    write_demo_weights(demo)

    write_test_models_readme([run(job, images, labels) for job in test_jobs()])


if __name__ == "__main__":
    main()
