"""How far the float32 network onnxruntime runs can be from the float64 network the certifier proves.

Certificates are about the float32 network. Bound propagation treats rounding as a bounded
perturbation injected at every node (``certify/bounds.py``); this module says how large it can be.
The model (Higham's, valid for any summation order, with or without FMA):

- an operator that sums ``n`` products (a row of Gemm, MatMul, Conv; an average) computes
  ``A v + b`` with an error of at most ``gamma(n + 1) (|A| |v| + |b|)``, ``gamma(n) = n u / (1 - n u)``
  and ``u = 2**-24``; moves (reshape, transpose, slice, pad, concat) and sign changes round nothing;
- the importer composes chains of such operators into one node and keeps, per node, the sum of
  the chain's rounding factors (``gsum``), the magnitude of its constants (``bmass``), the row
  sums of ``|A_k| ... |A_1|`` (``mass``) and whether that product equals ``|W|`` (``abs_exact``: no
  two paths of the chain cancel). The chain's own rounding is then at most
  ``gsum (|W| |v| + bmass)`` (``abs_exact``) or ``gsum (mass max|v| + bmass)``, where ``|v|`` bounds
  the magnitude of the node's inputs over the set being certified;
- ReLU, LeakyReLU and MaxPool are exact on float32 values; onnxruntime computes Sigmoid and Tanh
  by approximation, so they add an absolute allowance measured against float64 over the whole
  float32 range (``tests/test_certify_float32.py`` re-measures it);
- a final Softmax or LogSoftmax (dropped by the importer, monotone) can turn a strict order of
  logits into a float32 tie: every margin must also exceed ``FINAL_ALLOWANCE`` plus the rounding
  of the logits' magnitude.

Ties are part of the specification (argmax takes the first maximum), so a margin must be
*strictly* positive. Every rounding bound is multiplied by ``SAFETY``. Models whose float32
behaviour this does not describe are refused by the importer (casts to half precision) or by the
differential check against onnxruntime (``l0tre_core/sound.py``), which uses ``node_errors``, the
same model propagated through ``|W|``, as its tolerance.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from l0tre_core.certify.arrays import backend_of

U = 2.0**-24  # float32 unit roundoff
SAFETY = 2.0
# measured against float64 over the float32 range on onnxruntime 1.32's CPU kernels (max abs error
# 1.66e-7 for Sigmoid, 3.14e-7 for Tanh; max relative error of Softmax's probabilities 4.0e-6),
# times at least 2.4; the test re-measures and fails when a runtime exceeds half of these
SIGMOID_ABS = 4e-7
TANH_ABS = 8e-7
SOFTMAX_REL = 1e-5
FINAL_ALLOWANCE = 2 * SOFTMAX_REL  # in logits: exp(d) - 1 ~ d must beat both probabilities' errors


def gamma(n: int) -> float:
    """Higham's ``gamma_n``: the relative error bound of a sum of ``n`` float32 terms."""
    nu = n * U
    if nu >= 0.5:
        return float("inf")
    return nu / (1.0 - nu)


def magnitudes(bounds: Sequence[Any]) -> list[np.ndarray | None]:
    """Per node ``[B, D_j]``: the largest magnitude each value takes (from interval bounds)."""
    return [None if b is None else np.maximum(np.abs(b[0]), np.abs(b[1])) for b in bounds]


def output_errors(net: Any, mags: Sequence[np.ndarray | None]) -> np.ndarray:
    """``[B, K]``: bound on ``|float32 output - exact output|`` per output, given ``mags[j] [B, D_j]``
    (magnitude bounds of every node but the output, for B sets or points)."""
    return node_errors(net, mags)[net.output]


def node_errors(net: Any, mags: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Per node ``[B, D_j]``: bound on the float32 error of each of its values."""
    from l0tre_core.certify.network import apply_mat, pool_values

    nodes = net.nodes
    errs: list[Any] = [None] * len(nodes)
    errs[0] = np.zeros_like(mags[0])
    for j in range(1, len(nodes)):
        nd = nodes[j]
        if nd.kind == "linear":
            g = nd.gsum
            e = np.broadcast_to(g * nd.bmass, (errs[0].shape[0], nd.size)).copy()
            for i, (p, m) in enumerate(zip(nd.parents, nd.mass)):
                wabs = nd.mat_abs(i)
                e += apply_mat(errs[p], wabs)  # earlier errors pass through the exact linear map
                if not g:
                    continue
                if nd.abs_exact[i]:  # the chain's values are at most |W| |v| (+ constants)
                    e += g * apply_mat(mags[p], wabs)
                else:  # paths may cancel: bound the chain's values through the product of |A|s
                    e += g * m[None, :] * mags[p].max(axis=1, keepdims=True)
            errs[j] = e
            continue
        ep = errs[nd.parents[0]]
        if nd.kind == "relu":
            errs[j] = ep
        elif nd.kind == "maxpool":
            errs[j] = pool_values(ep, nd, 0.0).max(axis=-1)
        elif nd.kind == "leaky":
            errs[j] = max(1.0, abs(nd.alpha)) * ep
        elif nd.kind == "sigmoid":
            errs[j] = 0.25 * ep + SIGMOID_ABS
        elif nd.kind == "tanh":
            errs[j] = ep + TANH_ABS
        else:
            raise AssertionError(nd.kind)
    return errs


def output_magnitude(net: Any, mags: Sequence[np.ndarray | None]) -> np.ndarray:
    """``[B]``: a bound on the magnitude of the outputs, ``|W| |v| + |b|``."""
    from l0tre_core.certify.network import apply_mat

    nd = net.nodes[net.output]
    z = np.abs(backend_of(mags[nd.parents[0]]).put(nd.bias))[None, :]
    for i, p in enumerate(nd.parents):
        z = z + apply_mat(mags[p], nd.mat_abs(i))
    return z.max(axis=1)


def widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model-space interval widened by float32 rounding of the normalisation outside the graph
    (``(x - mean) / std`` in float32 may land a few ulps outside the float64 image of the range)."""
    pad = 4 * U * np.maximum(np.abs(lo), np.abs(hi)) + 1e-37
    return lo - pad, hi + pad
