"""Train and export the deep MLP the attack's tests use: 784-256x6-10 (six hidden ReLU layers).

NumPy only (no torch), so it runs in l0tre's own environment:

    python scripts/make_deep_mlp.py [--mnist-dir ../shared/data/mnist] [--epochs 4]

Like the other test models (tests/data/models/README.md) it trains on MNIST test images 0-7999
(t10k) and is scored on 8000-9999 with onnxruntime on the written file. Deep, narrow ReLU MLPs are
where single-pixel sensitivities say least about which pixel sets flip the label, so the
sensitivity union fails there more often than on CNNs: the attack's last resort is tested on it.
Seeded: a rerun with the same NumPy gives the same weights. Writes tests/data/models/mlp_deep.onnx.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "models" / "mlp_deep.onnx"
WIDTHS = [784] + [256] * 6 + [10]


def load(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as fh:
        x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers = [(rng.normal(0, np.sqrt(2.0 / a), (a, b)).astype(np.float32), np.zeros(b, np.float32))
              for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]
    m = [(np.zeros_like(w), np.zeros_like(b)) for w, b in layers]
    v = [(np.zeros_like(w), np.zeros_like(b)) for w, b in layers]
    step, lr, batch = 0, 1e-3, 64
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // batch):
            acts = [x[idx]]
            for i, (w, b) in enumerate(layers):
                z = acts[-1] @ w + b
                acts.append(np.maximum(z, 0) if i < len(layers) - 1 else z)
            p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            g = p / len(idx)
            step += 1
            for i in range(len(layers) - 1, -1, -1):
                w, b = layers[i]
                gw, gb = acts[i].T @ g, g.sum(0)
                if i:
                    g = (g @ w.T) * (acts[i] > 0)
                for j, (param, grad) in enumerate(((w, gw), (b, gb))):
                    m[i][j][...] = 0.9 * m[i][j] + 0.1 * grad
                    v[i][j][...] = 0.999 * v[i][j] + 0.001 * grad * grad
                    mh = m[i][j] / (1 - 0.9**step)
                    vh = v[i][j] / (1 - 0.999**step)
                    param -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
    return layers


def export(layers: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    nodes, inits, prev = [], [], "x"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"z{i}" if i < len(layers) - 1 else "logits"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp_deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    x, y = load(args.mnist_dir)
    export(train(x[:8000], y[:8000], args.epochs), OUT)
    sess = ort.InferenceSession(str(OUT), providers=["CPUExecutionProvider"])
    acc = float((sess.run(None, {"x": x[8000:]})[0].argmax(1) == y[8000:]).mean())
    print(f"wrote {OUT.relative_to(ROOT)}: held-out accuracy {100 * acc:.2f}%")


if __name__ == "__main__":
    main()
