"""Tiny ONNX classifiers and CLI helpers shared by the test suite.

Every model is built with ``onnx.helper`` from seeded NumPy weights, checked with
``onnx.checker`` and saved; the builders return the saved path. Keep the signatures stable:
the engine, certify and CLI tests all build their models here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
REPO = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).resolve().parent / "data" / "models"
DEMO_MODEL = REPO / "l0tre_core" / "demo" / "mnist_cnn.onnx"
DEMO_DATA = REPO / "l0tre_core" / "demo" / "mnist_heldout_500.npz"


# --- ONNX model builders ---------------------------------------------------------------------------


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _value(name: str, shape: Sequence[Any], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def make_model_with(
    path: str | Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] | Mapping[str, np.ndarray] = (),
    *,
    metadata: Mapping[str, Any] | None = None,
    opset: int = OPSET,
    extra_opsets: Mapping[str, int] | None = None,
    check: bool = True,
    name: str = "tiny",
) -> Path:
    """Save a graph built from raw parts (the escape hatch for unusual models).

    ``initializers`` may be TensorProtos or a name -> array mapping. ``metadata`` becomes
    ``metadata_props`` (non-string values are JSON-encoded). ``extra_opsets`` adds opset
    imports for custom domains. ``check=False`` skips ``onnx.checker`` (for models that
    are meant to be broken).
    """
    if isinstance(initializers, Mapping):
        initializers = [_init(k, v) for k, v in initializers.items()]
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    for domain, version in (extra_opsets or {}).items():
        opsets.append(helper.make_opsetid(domain, version))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="l0tre-tests")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    if check:
        onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _batch(fixed_batch: bool) -> Any:
    return 1 if fixed_batch else "N"


def make_mlp(
    path: str | Path,
    d_in: int = 16,
    hidden: int = 8,
    classes: int = 3,
    fixed_batch: bool = False,
    input_shape: Sequence[int] | None = None,
    *,
    seed: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """A ReLU MLP ``d_in -> hidden -> classes`` with logits out.

    ``input_shape`` is the per-sample input shape (default ``(d_in,)``; e.g. ``(d_in, 1)``
    for an ``[N, D, 1]`` input, which is flattened in the graph). ``fixed_batch`` declares
    batch 1 instead of a symbolic ``N``.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(input_shape) if input_shape is not None else (d_in,)
    if int(np.prod(shape)) != d_in:
        raise ValueError(f"input_shape {shape} does not hold {d_in} values")
    b = _batch(fixed_batch)
    nodes = []
    x = "x"
    if len(shape) != 1:
        nodes.append(helper.make_node("Flatten", ["x"], ["x_flat"], axis=1))
        x = "x_flat"
    nodes += [
        helper.make_node("Gemm", [x, "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
    ]
    w1 = rng.normal(0, 1.0 / np.sqrt(d_in), (d_in, hidden))
    # Each hidden unit ignores a uniform grey image: decisions follow the pattern, not the mean
    # brightness, so random inputs get varied labels.
    w1 -= w1.mean(axis=0, keepdims=True)
    inits = {
        "w1": (w1 * 2.0).astype(np.float32),
        "b1": rng.normal(0, 0.1, hidden).astype(np.float32),
        "w2": rng.normal(0, 1.0 / np.sqrt(hidden), (hidden, classes)).astype(np.float32),
        "b2": rng.normal(0, 0.1, classes).astype(np.float32),
    }
    return make_model_with(
        path,
        nodes,
        [_value("x", (b, *shape))],
        [_value("logits", (b, classes))],
        inits,
        metadata=metadata,
        name="mlp",
    )


def make_cnn(
    path: str | Path,
    layout: str = "nchw",
    c: int = 1,
    h: int = 4,
    w: int = 4,
    classes: int = 3,
    fixed_batch: bool = False,
    softmax: bool = False,
    normalise: tuple[Any, Any] | None = None,
    *,
    seed: int = 0,
    filters: int = 4,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Conv(3x3, pad 1) + ReLU + Linear on a ``c x h x w`` image; logits, or probabilities.

    ``layout`` is ``"nchw"`` or ``"nhwc"`` (an NHWC input is transposed in the graph).
    ``fixed_batch`` declares batch 1 and flattens with ``Reshape [1, -1]`` as exporters do,
    so the backend must rewrite the batch. ``normalise=(mean, std)`` (scalars or one per
    channel) bakes ``(x - mean) / std`` into the graph as Sub and Div.
    """
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be nchw or nhwc, got {layout!r}")
    rng = np.random.default_rng(seed)
    b = _batch(fixed_batch)
    in_shape = (b, c, h, w) if layout == "nchw" else (b, h, w, c)
    nodes = []
    inits: dict[str, np.ndarray] = {}
    x = "x"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [x], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    if normalise is not None:
        mean, std = normalise
        inits["mean"] = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (c,)).reshape(1, c, 1, 1).copy()
        inits["std"] = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (c,)).reshape(1, c, 1, 1).copy()
        nodes += [
            helper.make_node("Sub", [x, "mean"], ["x_centred"]),
            helper.make_node("Div", ["x_centred", "std"], ["x_norm"]),
        ]
        x = "x_norm"
    inits["conv_w"] = rng.normal(0, 1.0 / np.sqrt(9 * c), (filters, c, 3, 3)).astype(np.float32)
    inits["conv_b"] = rng.normal(0, 0.1, filters).astype(np.float32)
    nodes += [
        helper.make_node("Conv", [x, "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
    ]
    if fixed_batch:
        inits["flat_shape"] = np.array([1, -1], np.int64)
        nodes.append(helper.make_node("Reshape", ["act", "flat_shape"], ["flat"]))
    else:
        nodes.append(helper.make_node("Flatten", ["act"], ["flat"], axis=1))
    feats = filters * h * w
    fc_w = rng.normal(0, 1.0 / np.sqrt(feats), (filters, h * w, classes))
    # A feature map that is the same everywhere adds nothing: the label follows the spatial pattern
    # (so random inputs get varied labels, and a layout mix-up changes them).
    if h * w > 1:
        fc_w -= fc_w.mean(axis=1, keepdims=True)
    inits["fc_w"] = (fc_w.reshape(feats, classes) * 2.0).astype(np.float32)
    inits["fc_b"] = rng.normal(0, 0.1, classes).astype(np.float32)
    out = "probs" if softmax else "logits"
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    return make_model_with(
        path,
        nodes,
        [_value("x", in_shape)],
        [_value(out, (b, classes))],
        inits,
        metadata=metadata,
        name="cnn",
    )


# --- data and reference runs -------------------------------------------------------------------------


def write_npz(path: str | Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    path = Path(path)
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(path, **arrays)
    return path


def ort_outputs(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Outputs of an ONNX file on model-layout inputs, one sample at a time (works for batch 1)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.asarray(x, np.float32)
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def labelled_by_model(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Labels that the model at ``path`` gets 100% right on model-layout ``x``."""
    return np.argmax(ort_outputs(path, x).reshape(len(x), -1), axis=1).astype(np.int64)


# --- the command line ----------------------------------------------------------------------------------


def invoke(args: Sequence[str], plugins: Sequence[str] = (), **kwargs: Any) -> Any:
    """Run ``l0tre ARGS`` in-process on a fresh app; returns the CliRunner result."""
    from typer.testing import CliRunner

    from l0tre_cli import create_app
    from l0tre_core.host import create_host

    app = create_app(create_host(list(plugins), **kwargs))
    return CliRunner().invoke(app, [str(a) for a in args])


def l0tre_cmd() -> list[str]:
    """The command that starts the CLI in a child process, with this interpreter."""
    return [sys.executable, "-m", "l0tre_cli"]


def run_l0tre(
    args: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``l0tre ARGS`` in a child process (``env`` entries are added to os.environ)."""
    full_env = dict(os.environ)
    full_env.pop("L0TRE_DISABLE_PLUGIN_AUTOLOAD", None)
    full_env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    full_env.update(env or {})
    return subprocess.run(
        [*l0tre_cmd(), *[str(a) for a in args]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(stderr: str, *, contains: str | Sequence[str] = ()) -> str:
    """``stderr`` holds exactly one non-empty line, starting with ``error:``; returns it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error:")]
    # Notes such as "warning: the fixed batch was rewritten" may come before the error.
    others = [line for line in lines if not line.startswith(("error:", "warning:"))]
    assert len(errors) == 1 and not others, f"expected one 'error:' line, got:\n{stderr}"
    line = errors[0]
    for part in [contains] if isinstance(contains, str) else contains:
        if part:
            assert part.lower() in line.lower(), f"{part!r} not in {line!r}"
    return line
