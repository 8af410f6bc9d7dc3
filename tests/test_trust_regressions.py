"""Issue #8: one regression test per way a ``sound`` lower bound went false.

Each test builds a tiny classifier (4x4 grey input, range [0, 1]) on which ONE changed pixel flips
the label in onnxruntime, so d* = 1; the ground truth is established here with plain onnxruntime,
independently of l0tre. l0tre is then run end to end and must not report ``lower >= 2`` with the
guarantee ``sound`` (refusing to certify the model is fine; a false certificate is not).

1. a ``Cast`` to float16 / bfloat16 inside the graph, read by the certifier as the identity;
2. constant folding by ``onnx.reference`` disagreeing with onnxruntime (BatchNormalization in
   opsets 9..13 with ``momentum`` folds with batch statistics there, running statistics here);
3. a final ``Sigmoid`` saturating to 1.0 in float32, where argmax breaks the tie towards index 0;
4. an absolute proof tolerance on a float32 network: (a) logits near 1024, (b) a seeded MLP whose
   exact t = 1 margin is ~5e-8 and an interior value of one pixel flips it;
5. ``exact`` claimed under a ``discrete`` guarantee although an interior value flips (d* = 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import assert_one_line_error, invoke, make_model_with, write_npz

H = W = 4
D = H * W


def ort_scores(path: Path, x: np.ndarray) -> np.ndarray:
    """float32 onnxruntime outputs for a batch of ``[N, 1, 4, 4]`` inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.asarray(x, np.float32).reshape(-1, 1, H, W)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], np.float64).reshape(len(x), -1)


def ort_label(path: Path, x: np.ndarray) -> int:
    return int(np.argmax(ort_scores(path, x)[0]))


def with_pixel(x: np.ndarray, pixel: int, value: float) -> np.ndarray:
    out = np.array(x, np.float32).reshape(-1).copy()
    out[pixel] = np.float32(value)
    return out.reshape(1, 1, H, W)


def linear_model(path: Path, w: np.ndarray, b: np.ndarray, tail: Sequence[Any] = (), out: str = "z", opset: int = 17,
                 extra: dict[str, np.ndarray] | None = None) -> Path:
    """``x [N,1,4,4] -> Flatten -> Gemm(w, b) -> z``, then the ``tail`` nodes (the last one makes ``out``)."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w", "b"], ["z"]),
        *tail,
    ]
    inits = {"w": np.asarray(w, np.float32), "b": np.asarray(b, np.float32), **(extra or {})}
    return make_model_with(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, H, W])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", w.shape[1]])],
        inits,
        opset=opset,
    )


def l0tre(tmp_path: Path, model: Path, x: np.ndarray, lower: str = "sound") -> Any:
    data = write_npz(tmp_path / "x.npz", np.asarray(x, np.float32).reshape(-1, 1, H, W))
    return invoke(["robustness", model, "--data", data, "--lower", lower, "--max-t", "2",
                   "--certify-time", "2", "--format", "json", "-q"])


def assert_no_false_sound_bound(result: Any) -> None:
    """d* = 1 here: no input may carry a sound lower bound of 2 or more. Refusing the model for
    certification (a one-line usage error) is a correct answer too."""
    if result.exit_code != 0:
        assert result.exit_code == 2, (result.exit_code, result.stderr, result.stdout)
        assert_one_line_error(result.stderr, contains="--lower sound")
        return
    report = json.loads(result.stdout)
    false = [s for s in report["samples"] if s["guarantee"] == "sound" and s["lower"] >= 2]
    assert not false, f"d* = 1 (one pixel flips it in onnxruntime) but l0tre reports a sound lower bound: {false}"


# --- 1. a cast to half precision --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "w0", "bias"),
    [
        # float16 spacing at 1000 is 0.5: fp16(1000.3) = 1000.5, fp16(1000.2) = fp16(1000.1) = 1000
        (TensorProto.FLOAT16, -0.1, (1000.1, 1000.3)),
        # bfloat16 spacing at 1000 is 4: bf16(1004.5) = 1004, bf16(1000.6) = bf16(1000.5) = 1000
        (TensorProto.BFLOAT16, -3.9, (1000.5, 1004.5)),
    ],
    ids=["float16", "bfloat16"],
)
def test_cast_to_half_precision_is_not_the_identity(tmp_path: Path, to: int, w0: float, bias: tuple) -> None:
    w = np.zeros((D, 2), np.float32)
    w[0, 1] = w0  # pixel 0 lowers z1 a little; nothing else matters
    tail = [
        helper.make_node("Cast", ["z"], ["z_half"], to=to),
        helper.make_node("Cast", ["z_half"], ["logits"], to=TensorProto.FLOAT),
    ]
    model = linear_model(tmp_path / "cast.onnx", w, np.array(bias, np.float32), tail, out="logits")
    x = np.zeros((1, 1, H, W), np.float32)
    # ground truth: class 1 on the clean input, a tie (argmax 0) once pixel 0 is 1
    assert ort_label(model, x) == 1
    flipped = ort_scores(model, with_pixel(x, 0, 1.0))[0]
    assert flipped[0] == flipped[1] and ort_label(model, with_pixel(x, 0, 1.0)) == 0
    # ... although without the cast the margin never falls below 0.1: not a rounding accident
    for v in (0.0, 0.5, 1.0):
        z = with_pixel(x, 0, v).reshape(-1).astype(np.float64) @ w.astype(np.float64) + np.float32(bias).astype(np.float64)
        assert z[1] - z[0] >= 0.1 - 1e-4
    assert_no_false_sound_bound(l0tre(tmp_path, model, x))


# --- 2. constant folding that disagrees with onnxruntime ------------------------------------------


def test_constant_batchnorm_folded_as_onnxruntime_runs_it(tmp_path: Path) -> None:
    # z = Gemm(x) + BatchNormalization(c): c is a constant, so the certifier folds the
    # BatchNormalization. In opset 13 with ``momentum`` set, onnx.reference normalises with the
    # batch statistics mixed in (mean 0.1 c, variance 0.9: 10 -> 9.487); onnxruntime runs it in
    # inference mode with the running statistics (mean 0, variance 1: 10 -> 10).
    w = np.zeros((D, 2), np.float32)
    w[0, 1] = -0.4
    bn = helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["c_norm"], momentum=0.9)
    add = helper.make_node("Add", ["z", "c_norm"], ["logits"])
    extra = {
        "c": np.array([[10.0, 0.0]], np.float32),
        "bn_s": np.ones(2, np.float32),
        "bn_b": np.zeros(2, np.float32),
        "bn_m": np.zeros(2, np.float32),
        "bn_v": np.ones(2, np.float32),
    }
    model = linear_model(tmp_path / "bn.onnx", w, np.array([0.0, 10.3], np.float32), [bn, add], out="logits",
                         opset=13, extra=extra)
    x = np.zeros((1, 1, H, W), np.float32)
    # ground truth in onnxruntime: [10, 10.3] -> class 1; pixel 0 = 1 gives [10, 9.9] -> class 0
    assert ort_label(model, x) == 1
    assert ort_label(model, with_pixel(x, 0, 1.0)) == 0
    # the two evaluators really disagree, enough that the folded network is robust at t = 1
    from onnx.reference import ReferenceEvaluator

    ref_eval = ReferenceEvaluator(onnx.load(str(model)))
    for v in (0.0, 1.0):
        z = ref_eval.run(None, {"x": with_pixel(x, 0, v)})[0][0]
        assert z[1] - z[0] > 0.4, z
    assert_no_false_sound_bound(l0tre(tmp_path, model, x))


# --- 3. a final Sigmoid saturating in float32 ------------------------------------------------------


def test_final_sigmoid_saturating_in_float32(tmp_path: Path) -> None:
    # pre-activations a0 = 14.4 + 3 x0, a1 = 20: in float64 sigmoid(a1) - sigmoid(a0) >= 2.6e-8;
    # in float32 both saturate to exactly 1.0 once x0 = 1, and argmax picks index 0
    w = np.zeros((D, 2), np.float32)
    w[0, 0] = 3.0
    tail = [helper.make_node("Sigmoid", ["z"], ["scores"])]
    model = linear_model(tmp_path / "sigmoid.onnx", w, np.array([14.4, 20.0], np.float32), tail, out="scores")
    x = np.zeros((1, 1, H, W), np.float32)
    assert ort_label(model, x) == 1  # the reference is the model's own float32 prediction
    saturated = ort_scores(model, with_pixel(x, 0, 1.0))[0]
    assert saturated[0] == saturated[1] == 1.0
    assert ort_label(model, with_pixel(x, 0, 1.0)) == 0

    def sigmoid(a: float) -> float:
        return 1.0 / (1.0 + np.exp(-np.float64(a)))

    margin64 = sigmoid(np.float32(20.0)) - sigmoid(np.float32(14.4) + np.float32(3.0))
    assert 2.4e-8 < margin64 < 2.8e-8
    assert_no_false_sound_bound(l0tre(tmp_path, model, x))


# --- 4. an absolute proof tolerance on a float32 network --------------------------------------------


def test_float64_margin_of_1e6_near_1024_is_a_float32_tie(tmp_path: Path) -> None:
    # z0 = (1024 - 2^-12) + 2^-12 x0, z1 = 1024 + x1. The clean x1 = 1e-6 keeps class 1 in float64
    # (margin >= 1e-6 for any value of x0), but float32 spacing at 1024 is 1.2e-4: x0 = 1 ties.
    w = np.zeros((D, 2), np.float32)
    w[0, 0] = 2.0**-12
    w[1, 1] = 1.0
    b = np.array([1024.0 - 2.0**-12, 1024.0], np.float32)
    model = linear_model(tmp_path / "big.onnx", w, b)
    x = with_pixel(np.zeros(D, np.float32), 1, 1e-6)
    assert ort_label(model, x) == 1
    tied = ort_scores(model, with_pixel(x, 0, 1.0))[0]
    assert tied[0] == tied[1] == 1024.0 and ort_label(model, with_pixel(x, 0, 1.0)) == 0
    z64 = with_pixel(x, 0, 1.0).reshape(-1).astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    assert 9e-7 < z64[1] - z64[0] < 1.1e-6
    assert_no_false_sound_bound(l0tre(tmp_path, model, x))


def _mlp(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (D, 8)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (8, 2)).astype(np.float32)
    b2 = (rng.normal(0, 0.1, 2) + 3.0).astype(np.float32)  # logits near 3: float32 spacing 2.4e-7
    x = rng.uniform(0, 1, D).astype(np.float32)
    return w1, b1, w2, b2, x


def _margins64(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, xs: np.ndarray, ref: int) -> np.ndarray:
    f = [a.astype(np.float64) for a in (w1, b1, w2, b2)]
    z = np.maximum(xs.astype(np.float64) @ f[0] + f[1], 0.0) @ f[2] + f[3]
    return z[:, ref] - z[:, 1 - ref]


def _exact_t1_margin(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, x: np.ndarray,
                     ref: int) -> tuple[float, int, float]:
    """The exact (float64) minimum margin over every single-pixel change, its pixel and value: along
    one pixel the ReLU network is piecewise linear, so the minimum is at 0, 1 or a ReLU kink."""
    h = x.astype(np.float64) @ w1.astype(np.float64) + b1.astype(np.float64)
    best = (np.inf, -1, 0.0)
    for p in range(D):
        values = [0.0, 1.0]
        for j in np.flatnonzero(w1[p]):
            kink = float(x[p]) - h[j] / float(w1[p, j])
            if 0.0 < kink < 1.0:
                values.append(kink)
        xs = np.repeat(x[None].astype(np.float64), len(values), axis=0)
        xs[:, p] = values
        m = _margins64(w1, b1, w2, b2, xs, ref)
        k = int(np.argmin(m))
        if m[k] < best[0]:
            best = (float(m[k]), p, float(values[k]))
    return best


def _mlp_model(path: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> Path:
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
    ]
    return make_model_with(
        path, nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
    )


def _tiny_margin_mlp(folder: Path) -> tuple[Path, np.ndarray, int, int, np.ndarray, float]:
    """A seeded MLP, its output bias moved so that the exact t = 1 margin is 3e-8 .. 1e-7, on which
    float32 onnxruntime flips the label at some value of the critical pixel near the minimum.
    Rounding differs between CPUs' kernels, so a few seeds are tried (seed 11 shows it on the
    development machine: pixel 14 at 0.99999994 flips, pixel 14 at 1.0 does not)."""
    for seed in (11, *range(40)):
        w1, b1, w2, b2, x = _mlp(seed)
        ref = 0 if _margins64(w1, b1, w2, b2, x[None], 0)[0] >= 0 else 1
        m, _, _ = _exact_t1_margin(w1, b1, w2, b2, x, ref)
        b2 = b2.copy()
        b2[ref] = np.float32(float(b2[ref]) + 5e-8 - m)
        m, p, v = _exact_t1_margin(w1, b1, w2, b2, x, ref)
        if not 3e-8 <= m <= 1e-7:
            continue
        model = _mlp_model(folder / f"mlp_{seed}.onnx", w1, b1, w2, b2)
        if ort_label(model, x) != ref:
            continue
        # float32 values of the critical pixel from the minimum inwards (0.99999994, 0.99999988, ...)
        step = -1 if v > 0.5 else 1
        values = np.float32(v) + step * np.arange(400, dtype=np.float32) * np.float32(6e-8)
        values = values[(values >= 0) & (values <= 1)]
        xs = np.repeat(x[None], len(values), axis=0)
        xs[:, p] = values
        flips = values[np.argmax(ort_scores(model, xs), axis=1) != ref]
        if len(flips):
            return model, x, ref, p, flips, m
    pytest.fail("no seeded MLP with a ~5e-8 margin that float32 onnxruntime flips was found")


def test_margin_of_5e8_is_not_a_proof_for_float32(tmp_path: Path) -> None:
    model, x, ref, pixel, flips, margin = _tiny_margin_mlp(tmp_path)
    # ground truth: the exact t = 1 margin is positive (~5e-8), yet one pixel flips it in float32
    assert 3e-8 <= margin <= 1e-7
    adv = with_pixel(x, pixel, float(flips[0]))
    assert ort_label(model, x) == ref and ort_label(model, adv) != ref
    assert_no_false_sound_bound(l0tre(tmp_path, model, x))


# --- 5. exact claimed under a discrete guarantee ----------------------------------------------------


def test_exact_is_not_claimed_when_only_corners_were_enumerated(tmp_path: Path) -> None:
    # margin = 0.1 - bump(x0) - 0.06 (x1 + x2), bump a ReLU triangle: 0 at x0 = 0 and 1, 0.25 at
    # x0 = 0.5. Over the corners V = {0, 1} no single pixel flips (discrete lower bound 2) and
    # x1 = x2 = 1 does (upper bound 2), but x0 = 0.5 alone flips: d* = 1.
    w1 = np.zeros((D, 4), np.float32)
    w1[0, :3] = 1.0
    w1[1, 3] = w1[2, 3] = 0.06
    w2 = np.zeros((4, 2), np.float32)
    w2[:, 1] = [1.0, -2.0, 1.0, 1.0]
    model = make_model_with(
        tmp_path / "bump.onnx",
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        {"w1": w1, "b1": np.array([-0.25, -0.5, -0.75, 0.0], np.float32), "w2": w2,
         "b2": np.array([0.1, 0.0], np.float32)},
    )
    x = np.zeros((1, 1, H, W), np.float32)
    assert ort_label(model, x) == 0
    assert ort_label(model, with_pixel(x, 0, 0.5)) == 1  # d* = 1 ...
    for p in range(D):  # ... but no single pixel at a corner value flips it
        for v in (0.0, 1.0):
            assert ort_label(model, with_pixel(x, p, v)) == 0
    both = with_pixel(with_pixel(x, 1, 1.0), 2, 1.0)
    assert ort_label(model, both) == 1
    result = l0tre(tmp_path, model, x, lower="discrete")
    assert result.exit_code == 0, result.stderr
    (sample,) = json.loads(result.stdout)["samples"]
    assert sample["guarantee"] == "discrete"
    assert sample["exact"] is False, f"d* = 1 but a discrete bound is reported as exact: {sample}"
    if sample["upper"] is not None and sample["lower_discrete"] == sample["upper"]:
        assert sample.get("exact_over_v") is True, sample
