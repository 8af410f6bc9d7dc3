"""Coverage-guided test generation: for each target of the criterion that is not yet covered, rank
the input's pixels by their effect on that target (the L0-TRE t = 1 sensitivity, computed on the
target's objective instead of the margin) and change them, most effective first, until the target
is covered or the L0 budget is spent. Every generated input that covers something new is kept,
whether or not its label changed.

``cover_input`` is the whole per-input work, a function of (generator, input, coverage to start
from). The command gives every input the same coverage to start from, so inputs run anywhere, in
any order, and merges their tests in input order (``tasks.merge_in_order``: a test whose targets
an earlier input's tests covered is left out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l0tre_testgen.criteria import Criterion

SWEEP_ROWS = 4096  # perturbed inputs per probe call group in the single-pixel sweep


@dataclass
class CoverageTest:
    """One generated input: pixels of the source input set to values, and what it covers."""

    units: np.ndarray  # [k] int64 pixels
    values: np.ndarray  # [k, C] float32, data space
    target: int  # the target it was built for
    new: np.ndarray  # targets it covers that were not covered before it (int64)
    label_after: int
    covers: np.ndarray | None = None  # [T] bool, every target it covers (to merge inputs' tests)

    @property
    def l0(self) -> int:
        return int(len(self.units))


@dataclass
class InputRecord:
    """What ``cover_input`` did for one input."""

    tests: list[CoverageTest] = field(default_factory=list)
    targets_tried: int = 0
    evaluations: int = 0
    seconds: float = 0.0


@dataclass
class Generator:
    """Everything ``cover_input`` needs besides the input: the model, its probe, the criterion."""

    classifier: Any
    probe: Any  # CoverageProbe
    criterion: Criterion
    values: np.ndarray  # the value set V, [V, C] data space
    max_l0: int
    max_targets: int  # targets tried per input, closest to covered first

    def pre(self, images: np.ndarray) -> np.ndarray:
        """Pre-activations ``[B, N]`` of canonical data-space images ``[B, P, C]``."""
        return self.probe.pre_activations(np.asarray(self.classifier.model_input(images)))


def cover_input(gen: Generator, x: np.ndarray, covered: np.ndarray, deadline: float | None = None) -> InputRecord:
    """Tests generated from ``x`` (``[P, C]``) for targets not in ``covered`` (``[T]`` bool; not
    modified). Each test changes at most ``gen.max_l0`` pixels."""
    started = time.monotonic()
    rec = InputRecord()
    seen = covered.copy()
    base_obj = gen.criterion.objective(gen.pre(x[None]))[0]
    seen |= base_obj > 0  # what the clean input covers is not new
    todo = np.flatnonzero(~seen)
    if not len(todo) or gen.max_l0 < 1:
        return rec
    targets = todo[np.argsort(-base_obj[todo], kind="stable")][: gen.max_targets]  # closest first
    gain, best = _single_pixel_gains(gen, x, base_obj, targets)
    rec.evaluations += x.shape[0] * len(gen.values)
    for col, target in enumerate(targets):
        if seen[target]:
            continue
        if deadline is not None and time.monotonic() > deadline:
            break
        order = np.argsort(-gain[:, col], kind="stable")
        order = order[gain[order, col] > 0][: gen.max_l0]
        if not len(order):
            continue  # no single pixel moves this target towards covered: nothing to rank by
        rec.targets_tried += 1
        chosen = gen.values[best[order, col]]  # [k, C]
        prefixes = np.repeat(x[None], len(order), axis=0)
        for k in range(len(order)):  # prefix k changes the k + 1 most effective pixels
            prefixes[k:, order[k]] = chosen[k]
        cov = gen.criterion.covered(gen.pre(prefixes))  # [k, T]
        rec.evaluations += len(order)
        fresh = cov & ~seen
        hit = np.flatnonzero(cov[:, target])
        if len(hit):
            k = int(hit[0])
        else:
            anything = np.flatnonzero(fresh.any(axis=1))
            if not len(anything):
                continue
            k = int(anything[0])  # not the target, but something new: kept too
        adv = prefixes[k]
        changed = np.flatnonzero(np.any(adv != x, axis=1))
        label = int(np.argmax(gen.classifier.outputs(adv[None])[0]))
        rec.tests.append(CoverageTest(changed.astype(np.int64), adv[changed].astype(np.float32), int(target),
                                      np.flatnonzero(fresh[k]).astype(np.int64), label, cov[k].copy()))
        seen |= cov[k]
    rec.seconds = time.monotonic() - started
    return rec


def _single_pixel_gains(gen: Generator, x: np.ndarray, base_obj: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel and target: the largest rise of the target's objective when that pixel
    alone takes a value of V (``[P, T']`` float64), and which value (``[P, T']`` index into V)."""
    p, nv = x.shape[0], len(gen.values)
    gain = np.full((p, len(targets)), -np.inf)
    best = np.zeros((p, len(targets)), np.int64)
    pixels_per_call = max(1, SWEEP_ROWS // nv)
    for start in range(0, p, pixels_per_call):
        pix = np.arange(start, min(p, start + pixels_per_call))
        batch = np.repeat(x[None], len(pix) * nv, axis=0)
        rows = np.arange(len(pix) * nv)
        batch[rows, np.repeat(pix, nv)] = np.tile(gen.values, (len(pix), 1))
        obj = gen.criterion.objective(gen.pre(batch))[:, targets] - base_obj[targets]  # [m*V, T']
        obj = obj.reshape(len(pix), nv, len(targets))
        arg = obj.argmax(axis=1)
        gain[pix] = np.take_along_axis(obj, arg[:, None, :], axis=1)[:, 0, :]
        best[pix] = arg
    return gain, best
