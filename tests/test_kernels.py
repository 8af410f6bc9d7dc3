"""Perturbation kernels: the NumPy reference, and CuPy against it where a GPU is usable."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l0tre_core.geometry import geometry_for
from l0tre_core.tensors import NumpyKernels, make_encoder
from l0tre_cupy import CupyKernels


def reference(base, positions, values):
    out = np.repeat(base[None], len(positions), axis=0)
    for b in range(len(positions)):
        for j in range(positions.shape[1]):
            out[b, positions[b, j]] = values[b, j]
    return out


@settings(max_examples=50, deadline=None)
@given(d=st.integers(1, 40), b=st.integers(1, 20), m=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_numpy_kernel_matches_the_loop(d: int, b: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.random(d, dtype=np.float32)
    positions = np.stack([rng.choice(d, size=min(m, d), replace=False) for _ in range(b)])
    values = rng.random(positions.shape, dtype=np.float32)
    got = NumpyKernels().perturb(base, positions, values)
    np.testing.assert_array_equal(got, reference(base, positions, values))


@pytest.mark.parametrize("layout,shape", [("nchw", (None, 3, 2, 4)), ("nhwc", (None, 2, 4, 3)), ("flat", (None, 24))])
def test_encoder_writes_every_channel_of_a_pixel_where_the_layout_puts_it(layout, shape) -> None:
    g = geometry_for(shape, layout, 3 if layout == "flat" else None)
    enc = make_encoder(g, np.zeros(g.n_channels), np.ones(g.n_channels), "pixel")
    rng = np.random.default_rng(0)
    x = rng.random((1, g.n_pixels, g.n_channels), dtype=np.float32)
    base = g.to_model(x).reshape(-1)
    units = np.array([[5]])
    new = np.array([[[7.0, 8.0, 9.0]]], np.float32)
    pos, val = enc.encode(units, new)
    flat = NumpyKernels().perturb(base, pos, val)
    want = x.copy()
    want[0, 5] = new[0, 0]
    np.testing.assert_array_equal(flat.reshape(1, *g.sample_shape), g.to_model(want))


def gpu_or_skip() -> CupyKernels:
    kernels = CupyKernels()
    if not kernels.usable():
        if os.environ.get("L0TRE_REQUIRE_GPU") == "1":
            pytest.fail("L0TRE_REQUIRE_GPU=1 but CuPy has no usable GPU")
        pytest.skip("no usable CUDA GPU with CuPy here")
    return kernels


@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(5))
def test_cupy_kernel_matches_numpy(seed: int) -> None:
    kernels = gpu_or_skip()
    rng = np.random.default_rng(seed)
    d, b, m = 784, 513, 6
    base = rng.random(d, dtype=np.float32)
    positions = np.stack([rng.choice(d, size=m, replace=False) for _ in range(b)])
    values = rng.random(positions.shape, dtype=np.float32)
    got = kernels.to_host(kernels.perturb(kernels.asarray(base), positions, values))
    np.testing.assert_array_equal(got, NumpyKernels().perturb(base, positions, values))


# --- the IOBinding path, on the CPU provider (host OrtValues): the GPU hand-off's code path ---------


class HostBoundKernels(NumpyKernels):
    """The NumPy kernels, but asking the search to keep outputs 'on the device' (here the host):
    batches go through the runtime's IOBinding and are reduced by ``reduce``, as with CuPy."""

    name = "numpy-bound"
    device_outputs = True


def _demo():
    from l0tre_core import load_data, load_model

    clf = load_model(None)
    data = load_data(None, clf.geometry, clf.card.range, n=3)
    return clf, data


def test_iobinding_on_the_cpu_provider_gives_the_session_outputs() -> None:
    clf, data = _demo()
    x = clf.model_input(np.repeat(data.x, 40, axis=0))  # 120 rows, then fewer: the buffer is reused
    rt = clf.runtime
    want = rt.session.run([rt.output_name], {rt.input_name: x})[0]
    np.testing.assert_array_equal(rt.run_bound(x), want)
    np.testing.assert_array_equal(rt.run_bound(x[:7]), want[:7])
    assert rt.run_bound(x[:7]).shape == (7, clf.n_classes)


def test_iobinding_with_an_output_shape_known_only_at_run_time(tmp_path) -> None:
    from onnx import TensorProto, helper

    from helpers import make_model_with

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    path = make_model_with(
        tmp_path / "m.onnx", [helper.make_node("MatMul", ["x", "w"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "K"])], {"w": w},
    )
    import onnxruntime as ort

    from l0tre_onnxruntime.session import IoBinder

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    binder = IoBinder(sess, "x", "z", ("N", "K"))
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    np.testing.assert_allclose(binder.run(x, cuda=False), x @ w, rtol=1e-6)


@pytest.mark.parametrize("t", [1, 2])
def test_the_search_through_iobinding_and_kernel_reduction_matches_the_host_path(t: int) -> None:
    from l0tre_core.sweep import SearchContext
    from l0tre_core.threat import ThreatModel

    clf, data = _demo()
    clf.tuner = type(clf.tuner)(200)  # a fixed size that splits the chunks: several bound calls
    ref = int(clf.predict(data.x[:1])[0])
    threat = ThreatModel(lo=0.0, hi=1.0)
    host = SearchContext(clf, NumpyKernels(), threat, data.x[0], ref, 4096)
    bound = SearchContext(clf, HostBoundKernels(), threat, data.x[0], ref, 4096)
    deadline = None if t == 1 else -1.0  # t = 2: the first chunk only
    a, b = host.sweep(t, deadline), bound.sweep(t, deadline)
    assert a.evaluated == b.evaluated and a.complete == b.complete
    np.testing.assert_array_equal(a.subsets, b.subsets)
    np.testing.assert_array_equal(a.sensitivity, b.sensitivity)
    units = a.subsets[:50]
    vals = np.ones((*units.shape, 1), np.float32)
    sh, fh = host.assess_changes(units, vals)
    sb, fb = bound.assess_changes(units, vals)
    np.testing.assert_array_equal(sh, sb)
    np.testing.assert_array_equal(fh, fb)


def test_the_random_search_through_iobinding_finds_the_same_examples() -> None:
    from l0tre_attack.random_search import RandomSearch
    from l0tre_core.sweep import SearchContext
    from l0tre_core.threat import ThreatModel

    clf, data = _demo()
    ref = int(clf.predict(data.x[:1])[0])
    found = []
    for kernels in (NumpyKernels(), HostBoundKernels()):
        ctx = SearchContext(clf, kernels, ThreatModel(lo=0.0, hi=1.0), data.x[0], ref, 4096)
        out = RandomSearch(queries=600).search(ctx, None, np.random.default_rng(3))
        found.append(None if out.witness is None else (out.witness.units.tolist(), out.evaluations))
    assert found[0] is not None and found[0] == found[1]


# --- on a GPU: the CuPy reduction and the CUDA IOBinding hand-off against the host path -----------


@pytest.mark.gpu
@pytest.mark.parametrize("kind,probs", [("margin", False), ("logit", False), ("margin", True)])
def test_cupy_reduction_matches_numpy(kind: str, probs: bool) -> None:
    kernels = gpu_or_skip()
    rng = np.random.default_rng(1)
    out = rng.normal(size=(1000, 10)).astype(np.float32)
    if probs:
        out = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    out[3, 2] = np.nan  # never a flip
    out[4] = out[4, 7]  # a tie everywhere: argmax takes the first
    for ref in (0, 7, 9):
        s_gpu, f_gpu = kernels.reduce(kernels.asarray(out), ref, kind, probs)
        s_cpu, f_cpu = NumpyKernels().reduce(out, ref, kind, probs)
        np.testing.assert_array_equal(f_gpu, f_cpu)
        # the same arithmetic in the same order, but CUDA's logf and the host's may differ by an
        # ulp (log probabilities reach about -69, where a float32 ulp is 7.6e-6); flags are exact
        atol = 2 * float(np.spacing(np.float32(69.1))) if probs else 0.0
        np.testing.assert_allclose(s_gpu, s_cpu, rtol=0, atol=atol, equal_nan=True)


@pytest.mark.gpu
def test_the_cuda_search_matches_the_host_search() -> None:
    gpu_or_skip()
    from l0tre_core import load_data, load_model
    from l0tre_core.sweep import SearchContext
    from l0tre_core.threat import ThreatModel

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
    clf = load_model(None, device="cuda")
    data = load_data(None, clf.geometry, clf.card.range, n=2)
    ref = int(clf.predict(data.x[:1])[0])
    threat = ThreatModel(lo=0.0, hi=1.0)
    a = SearchContext(clf, NumpyKernels(), threat, data.x[0], ref, 4096).sweep(1, None)
    b = SearchContext(clf, CupyKernels(), threat, data.x[0], ref, 4096).sweep(1, None)
    # cuDNN's sums may round differently from the CPU's (TF32 is off): near-ties may swap ranks
    assert a.evaluated == b.evaluated and a.complete == b.complete
    np.testing.assert_allclose(np.sort(a.sensitivity), np.sort(b.sensitivity), rtol=0, atol=1e-4)
