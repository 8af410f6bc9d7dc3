"""Boxes bounded on another array module (``certify/arrays.py``): CuPy on a GPU.

- On any machine: the pass run on ``STRICT`` (host memory whose arrays refuse to mix with plain
  host arrays, as CuPy's do) gives bit-identical box bounds and the same verdicts as NumPy, on the
  zoo's CNNs and MLP and on small networks with every operator family the pass handles
  (structured convolutions, max and average pooling, BatchNorm, Softmax, LeakyReLU, sigmoid,
  tanh, normalisation, NHWC). A constant that the pass forgot to put on the device raises there.
- On a GPU (``gpu`` mark): the same with CuPy, equal up to float64 summation order.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from l0tre_core.certify import InputSet, Network, certify, network
from l0tre_core.certify.arrays import NUMPY, STRICT, ArrayBackend, add_at, cupy_backend
from l0tre_core.certify.boxes import Boxes, box_bounds
from l0tre_core.certify.search import problem_for
from test_certify_soundness import _input_set
from test_certify_support import build_cnn, build_mlp

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"


def _zoo(name: str) -> Network:
    import onnx

    model = onnx.load(str(ZOO / f"{name}.onnx"))
    return Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (1, 28, 28))


def _mnist(i: int) -> np.ndarray:
    with gzip.open(ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        img = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[i]
    return img.astype(np.float64) / 255


def _boxes(prob: object, rng: np.random.Generator, sizes: list[int]) -> Boxes:
    """Whole-range boxes freeing ``sizes`` random pixels each, pixel by pixel (as the cover's blocks)."""
    parts = []
    for k in sizes:
        pix = rng.choice(prob.P, min(k, prob.P), replace=False)  # type: ignore[attr-defined]
        sc = prob.pixel_scalars[pix].reshape(-1)  # type: ignore[attr-defined]
        lo, hi, x0 = prob.lo[sc], prob.hi[sc], prob.x0[sc]  # type: ignore[attr-defined]
        parts.append(Boxes(sc[None], (lo - x0)[None], (hi - x0)[None], np.zeros(1, np.int64)))
    return Boxes.concat(parts)


_MODES = {"inside": {}, "outside": {"inside_ball": False}, "budget": {"budget": 2}}  # (as the cover's blocks)


def _both(prob: object, boxes: Boxes, ref: int, arrays: ArrayBackend) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for mode, kw in _MODES.items():
        for be in (NUMPY, arrays):
            prob.arrays = be  # type: ignore[attr-defined]
            try:
                out[f"{be.name} {mode}"] = box_bounds(prob, boxes, ref, **kw)  # type: ignore[arg-type]
            finally:
                prob.arrays = NUMPY  # type: ignore[attr-defined]
    return out


def _assert_same(out: dict[str, tuple[np.ndarray, np.ndarray]], name: str, rtol: float) -> None:
    for mode in _MODES:
        (lb, hint), (lb2, hint2) = out[f"numpy {mode}"], out[f"{name} {mode}"]
        assert isinstance(lb2, np.ndarray) and type(lb2) is np.ndarray  # on the host
        if rtol == 0:
            np.testing.assert_array_equal(lb2, lb)
            np.testing.assert_array_equal(hint2, hint)
        else:
            np.testing.assert_allclose(lb2, lb, rtol=rtol, atol=rtol)
            np.testing.assert_allclose(hint2, hint, rtol=rtol, atol=rtol)


def test_the_strict_device_refuses_host_arrays() -> None:
    """The stand-in is strict (else the tests below could not fail): host arrays do not mix."""
    a = STRICT.asarray(np.ones(3))
    with pytest.raises(TypeError):
        a + np.ones(3)
    with pytest.raises(TypeError):
        np.maximum(a, np.ones(3))
    with pytest.raises(TypeError):
        np.einsum("i,i->", a, np.ones(3))
    with pytest.raises(TypeError):
        a @ np.ones((3, 2))
    assert type(a + 1.0) is type(a) and type(np.abs(a).max(axis=0)) is not np.ndarray
    kept = np.arange(4.0)
    assert STRICT.put(kept) is STRICT.put(kept)  # one device copy per host array


@pytest.fixture(params=["strict", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> tuple[ArrayBackend, float]:
    """The device and how far its bounds may lie from NumPy's: not at all on the strict stand-in
    (the same NumPy arithmetic), by float64 summation order on a GPU."""
    if request.param == "strict":
        return STRICT, 0.0
    be = cupy_backend()
    if be is None:
        if os.environ.get("L0TRE_REQUIRE_GPU") == "1":
            pytest.fail("L0TRE_REQUIRE_GPU=1 but CuPy has no usable GPU")
        pytest.skip("no usable CUDA GPU with CuPy here")
    return be, 1e-9


@pytest.mark.parametrize("name", ["mnist_convsmall", "mnist_maxpool", "mnist_mlp"])
def test_the_zoo_bounds_are_the_same_on_the_device(name: str, device: tuple[ArrayBackend, float]) -> None:
    net = _zoo(name)
    x0 = _mnist(8003)
    prob = problem_for(net, InputSet(x0=x0, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784))
    prob.prepare_float32(2)
    ref = int(np.argmax(net.forward(x0[None])[0]))
    boxes = _boxes(prob, np.random.default_rng(0), [1] * 6 + [2] * 6 + [20] * 6 + [80] * 3)
    _assert_same(_both(prob, boxes, ref, device[0]), device[0].name, device[1])


_FAMILIES = [
    ("max pool, two convolutions", lambda s: build_cnn(s, pool="max", second_conv=True, dense=8, hw=(4, 4), conv=(3, 3, 1, 1))),
    ("BatchNorm, Softmax", lambda s: build_cnn(s, pool="max", second_conv=True, dense=6, hw=(4, 4), conv=(3, 2, 1, 0),
                                               pool_s=1, softmax=True, bn=True)),
    ("average pool, normalised", lambda s: build_cnn(s, pool="avg", dense=8, hw=(5, 5), conv=(3, 3, 1, 1), normalise=True)),
    ("global average pool, 3 channels, NHWC", lambda s: build_cnn(s, pool="gavg", channels=3, layout="nhwc", dense=None)),
    ("leaky, strided, dilated", lambda s: build_cnn(s, act="leaky", conv=(4, 3, 2, 1), dilation=2, hw=(6, 6))),
    ("sigmoid MLP, Softmax", lambda s: build_mlp(s, act="sigmoid", softmax=True)),
    ("tanh MLP, 3 channels", lambda s: build_mlp(s, act="tanh", channels=3, normalise=True)),
]


@pytest.mark.parametrize("family", [f[0] for f in _FAMILIES])
def test_every_operator_family_is_the_same_on_the_device(family: str, device: tuple[ArrayBackend, float],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "DENSE_CONV_MAX", 0)  # convolutions structured: the cone paths
    build = dict(_FAMILIES)[family]
    for seed in (1, 2):
        case = build(seed)
        net = Network.from_onnx(case.model, case.input_name, case.output_name, case.sample_shape)
        x0 = np.random.default_rng(seed).uniform(0, 1, case.d)
        ref = int(np.argmax(net.forward(x0[None])[0]))
        prob = problem_for(net, _input_set(case, x0))
        prob.prepare_float32(2)
        boxes = _boxes(prob, np.random.default_rng(seed), [1, 1, 2, 2, 3, case.n_pixels])
        _assert_same(_both(prob, boxes, ref, device[0]), device[0].name, device[1])


@pytest.mark.parametrize("name,t", [("mnist_convsmall", 2), ("mnist_maxpool", 1)])
def test_certify_gives_the_same_verdict_on_the_device(name: str, t: int, device: tuple[ArrayBackend, float]) -> None:
    be = device[0]
    net = _zoo(name)
    x0 = _mnist(8005)
    inputs = InputSet(x0=x0, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)
    ref = int(np.argmax(net.forward(x0[None])[0]))
    a = certify(net, inputs, ref, t, time_limit=120)
    b = certify(net, inputs, ref, t, time_limit=120, arrays=be)
    assert a.status == b.status != "unknown"
    if be.chunk_scale == 1:  # the same batches: the same boxes and blocks, in the same order
        assert a.detail == b.detail


def test_the_engine_certifies_on_the_gpu_when_its_kernels_are_cupys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's choice of device carries to the certifier: CuPy kernels (a usable GPU, device
    auto or cuda) put the boxes' pass on the GPU; NumPy kernels keep it on the host."""
    from l0tre_core import certifier
    from l0tre_core.certify import arrays
    from l0tre_core.tensors import NumpyKernels
    from l0tre_cupy import CupyKernels

    monkeypatch.setattr(arrays, "cupy_backend", lambda: STRICT)
    assert certifier._arrays_for(CupyKernels()) is STRICT
    assert certifier._arrays_for(NumpyKernels()) is None


@pytest.mark.parametrize("backend", [NUMPY, STRICT], ids=["numpy", "strict"])
def test_add_at_adds_repeated_and_negative_indices_as_np_add_at(backend: ArrayBackend) -> None:
    """``add_at`` (a weighted bincount on the host) is ``np.add.at``: repeated indices add up,
    negative ones count from the end, other dtypes and index forms take ``np.add.at`` itself."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 50))
    idx = (rng.integers(0, 4, (7, 9)), rng.integers(-3, 3, (7, 9)), rng.integers(0, 50, (7, 9)))
    v = rng.normal(size=(7, 9))
    want = a.copy()
    np.add.at(want, idx, v)
    got = backend.asarray(a.copy())
    add_at(got, tuple(backend.asarray(i) for i in idx), backend.asarray(v))
    np.testing.assert_allclose(backend.get(got), want, rtol=0, atol=1e-14)
    counts = np.zeros(5, dtype=np.int64)
    add_at(counts, (np.array([1, 1, 4]),), np.array([2, 3, 1]))
    assert counts.tolist() == [0, 5, 0, 0, 1]
