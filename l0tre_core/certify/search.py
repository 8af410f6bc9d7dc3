"""Certification: one pass, then attack and split until proven, refuted or out of time.

- t = 1: the one-pass bound; then every single-pixel box (the pixel's channels free, all others
  fixed) is bounded in batches (forward-mode linear bounds + backward CROWN; convolutions over the
  box's receptive-field cone only, ``certify/boxes.py``), undecided boxes are bisected, and the
  corners/centres of undecided boxes are evaluated to find counterexamples. Complete up to
  ``MAX_DEPTH`` bisections: proven or refuted unless time runs out. On networks wider than
  ``LIGHT_WIDTH`` neurons the ball's intermediate bounds are light (``Problem.light``: CROWN for
  the first layer, intervals after it; at every t): there they serve only the float32 rounding
  magnitudes and a one-pass check that rarely proves, and full CROWN over the ball costs more than
  the boxes.
- t >= 2: the one-pass bound; an attack (all single-pixel corners, skipped when t = 1 has just
  proven every pixel box, then a beam search over corner assignments of the most sensitive
  pixels); then branch and bound over pixels ("p unchanged"
  versus "p changed, budget t - 1"), domains whose budget reaches 0 becoming boxes as for t = 1.
  When branch and bound has not finished within ``COVER_SWITCH_SHARE`` of the time left (or at
  once, when the one-pass bound is below ``-COVER_DIRECT`` clean margins), covering blocks take
  over (``certify/cover.py``: Calzone's blocks of many free pixels, each proving all its
  t-subsets, split down to t-pixel boxes where they fail; complete): on CNNs, branch and bound on
  one-pass bounds makes little progress.

A certificate is about the float32 network onnxruntime runs: every bound includes the float32
rounding the network can add (``certify/float32.py``, ``Problem.prepare_float32``), and a margin
counts as proven only when its lower bound is strictly positive (a tie with a lower-index class is
a flip). The band is what the float32 terms cost a bound: a box bisected ``BAND_DEPTH`` times
whose bound without them is positive but with them is not is given up (the search's boxes), as is
a one-pass bound in that position (``split=False``): the verdict is then ``unknown`` with
``band`` set. A witness needs a
margin below ``-WITNESS_TOL`` and is re-verified (argmax, changed pixels, range) before it is
returned; the engine verifies it again in onnxruntime.

This module holds the entry points (``certify``, ``margin_lower_bounds``, ``proof_margins``), the
one-pass verdict and the tuning constants below; the search itself is ``_Search`` in
``certify/split.py`` (its attacks in ``certify/attacks.py``), which reads the constants through
this module (setting ``search.COVER_SWITCH_SHARE`` takes effect). ``_Search`` is re-exported here
on first use (``certify/split.py`` imports this module).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from l0tre_core.certify._types import InputSet, Verdict
from l0tre_core.certify.arrays import NUMPY, ArrayBackend
from l0tre_core.certify.bounds import spec_bounds
from l0tre_core.certify.network import Network
from l0tre_core.certify.problem import Domains, OutOfTime, Problem

WITNESS_TOL = 1e-6  # a witness must have margin below -WITNESS_TOL (float32 runtimes stay safe)
MAX_DEPTH = 40  # bisections of one box before it is given up (unknown)
BAND_DEPTH = 8  # bisections of a box that float64 proves but the float32 band does not
BOX_CHUNK_FLOATS = 12_000_000
DOMAIN_BATCH = 8
MAX_CORNERS = 8
COVER_SWITCH_SHARE = 0.1  # t >= 2: share of the time left for branch and bound before covering blocks
COVER_SWITCH_SECONDS = 10.0  # ... and the time it gets when there is no time limit
COVER_DIRECT = 1.0  # ... none when the one-pass bound is below minus this many clean margins
COVER_SHARE = 0.8  # a task's predicted load at most (``cover._Cover._load``: the pixels' summed costs, in clean margins)
COVER_HOPELESS = 1.2  # a task predicted above this is split without being bounded ...
COVER_HOPELESS_DOUBLINGS = 3  # ... unless probes above it are proven (``_Cover._hopeless_level``): up to 8x
COVER_MAX_GROUP = 128  # pixels per group at most
COVER_PROBE_LEVELS = (2.0, 4.0, 8.0)  # predicted loads (in COVER_SHARE) probed by ``_Cover._calibrate``
COVER_PROBE_BLOCKS = 4  # ... with this many random blocks each
COVER_PROBE_PROVEN = 0.75  # ... of which this share must be proven for the level to count
BOUND_THREADS = 2  # batches of boxes or blocks bounded at once on the host (``split._Search._threads``), one BLAS thread each
LIGHT_WIDTH = 4_000  # networks with more neurons than this: light ball bounds (``Problem.light``)


class _Timer:
    def __init__(self, limit: float | None) -> None:
        self.start = time.perf_counter()
        self.deadline = None if limit is None else self.start + max(0.0, limit)

    def out(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def problem_for(net: Network, inputs: InputSet) -> Problem:
    return Problem(net, inputs.x0, inputs.lo, inputs.hi, inputs.pixel, inputs.n_pixels)


def margins(net: Network, ref: int, x: np.ndarray) -> np.ndarray:
    """``z_ref - max_{k != ref} z_k`` for each row of ``x``."""
    z = net.forward(x)
    others = np.delete(z, ref, axis=1)
    return z[:, ref] - others.max(axis=1)


def margin_lower_bounds(net: Network, inputs: InputSet, ref: int, t: int) -> np.ndarray:
    """One-pass lower bounds of ``z_ref - z_k`` over the L0 set of size ``t``, as an array of length
    K with ``+inf`` at ``ref``. The one-pass check proves iff all entries are > 0."""
    prob = problem_for(net, inputs)
    out = np.full(net.n_outputs, np.inf)
    if net.n_outputs < 2:
        return out
    t = int(max(0, min(t, prob.P)))
    lb, _, _ = spec_bounds(prob, Domains.ball(prob, t), ref)
    out[[k for k in range(net.n_outputs) if k != ref]] = lb[0]
    return out


def proof_margins(net: Network, inputs: InputSet, ref: int, t: int) -> np.ndarray:
    """The one-pass lower bounds of the float32 network's margins (``[K-1]``, classes other than
    ``ref`` in order): the one-pass check proves ``t`` iff all are > 0."""
    prob = problem_for(net, inputs)
    t = int(max(0, min(t, prob.P)))
    bounds = prob.prepare_float32(t)
    return spec_bounds(prob, Domains.ball(prob, t), ref, bounds=bounds)[0][0]


def _band(prob: Problem, t: int, ref: int, lb: np.ndarray) -> np.ndarray:
    """``[K-1]``: what the float32 terms cost the one-pass bounds ``lb``."""
    prob.exact_arithmetic = True
    try:
        lb64 = spec_bounds(prob, Domains.ball(prob, t), ref)[0][0]
    finally:
        prob.exact_arithmetic = False
    return np.maximum(lb64 - lb, 0.0)


def certify(
    net: Network,
    inputs: InputSet,
    ref: int,
    t: int,
    *,
    time_limit: float | None = None,
    split: bool = True,
    arrays: ArrayBackend | None = None,
    threads: int = 0,
) -> Verdict:
    """Is every input of at most ``t`` changed pixels (each changed pixel's channels anywhere in
    ``[lo, hi]``) classified ``ref``?

    ``proven``: yes, for the network evaluated in float32 with any summation order (every margin
    bound clears the float32 band; a tie with a lower-index class counts as a flip). ``refuted``: ``witness`` is a model-space
    input with at most ``t`` changed pixels (unchanged scalars bit-identical to ``x0``) that the
    network classifies otherwise. ``unknown``: neither within ``time_limit`` seconds (None: no
    limit; the one-pass bound always runs to the end). ``split=False``: the one-pass bound only.
    ``arrays``: where boxes are bounded (``certify/arrays.py``; default NumPy). ``threads``: at
    most this many batches of boxes bounded at once on the host (0: ``BOUND_THREADS``, up to the
    cores; a worker given one CPU passes 1).
    """
    timer = _Timer(time_limit)
    prob = problem_for(net, inputs)
    prob.arrays = NUMPY if arrays is None else arrays
    if not 0 <= ref < net.n_outputs:
        raise ValueError(f"reference label {ref} out of range")
    if net.n_outputs < 2:
        return Verdict("proven", None, timer.elapsed(), "a single output cannot change its top-1 label")
    z0 = net.forward(prob.x0[None])[0]
    m0 = float(z0[ref] - np.delete(z0, ref).max()) if net.n_outputs > 1 else np.inf
    if int(np.argmax(z0)) != ref:
        if m0 < -WITNESS_TOL:
            return Verdict("refuted", prob.x0.copy(), timer.elapsed(), "the clean input is not classified ref")
        # a near-tie that float32 and float64 may break differently: claim nothing
        return Verdict("unknown", None, timer.elapsed(), "the clean input is a near-tie with ref")
    t = int(max(0, min(t, prob.P)))
    # a wide network is decided by its single-pixel boxes (t = 1) or its blocks (t >= 2, which use
    # none of the ball's terms): the ball's bounds serve the rounding magnitudes of boxes and the
    # one-pass check, and CROWN on every intermediate neuron of the ball costs more than it gives
    prob.light = split and sum(nd.size for nd in net.nodes) > LIGHT_WIDTH
    # a time limit also stops a pass of bounds midway (OutOfTime): the ball's bounds on a wide
    # network take seconds; the one-pass bound without a limit always runs to the end
    prob.deadline = timer.deadline if split else None
    try:
        # float32 rounding bounds from the ball: every box and domain of the search lies inside it
        bounds = prob.prepare_float32(t)
        lb, a_in, _ = spec_bounds(prob, Domains.ball(prob, t), ref, want_input=True, bounds=bounds)
    except OutOfTime:
        return Verdict("unknown", None, timer.elapsed(), "timeout in the ball's bounds")
    if lb.min() > 0:
        return Verdict("proven", None, timer.elapsed(), "one-pass" if t else "t = 0")
    if t == 0 or not split:
        in_band = bool((lb[0] + _band(prob, t, ref, lb[0])).min() > 0)
        return Verdict("unknown", None, timer.elapsed(), "inside the float32 band" if in_band else "one-pass inconclusive",
                       band=in_band)
    from l0tre_core.certify.split import _Search  # it imports this module

    search = _Search(prob, ref, t, timer, threads)
    try:
        return search.run(lb, a_in)
    except OutOfTime:
        return search.verdict(f"{search.n_boxes} boxes, timeout in a pass of bounds")


def __getattr__(name: str) -> Any:
    """``_Search``, re-exported from ``certify/split.py`` on first use (it imports this module)."""
    if name == "_Search":
        from l0tre_core.certify.split import _Search

        return _Search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
