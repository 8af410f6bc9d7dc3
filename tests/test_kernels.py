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
