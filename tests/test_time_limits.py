"""The engine keeps each input's time limit (issue #10): every phase of a level is given a deadline
no later than the input's, no lower-bound method is started once it has passed, the sweep sizes
its chunks to end by it, and a run cut short claims nothing it did not prove. No timed assertion
on exact seconds: the bounds on time are generous multiples of the limit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import labelled_by_model, make_mlp, write_npz
from l0tre_core.api import evaluate
from l0tre_core.certifier import SoundCertifier
from l0tre_core.contracts import Certificate
from l0tre_core.driver import Budget, Driver
from l0tre_core.model import load_model
from l0tre_core.data import load_data
from l0tre_core.sweep import PROBE_EVALUATIONS, SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel

D_IN = 64  # t = 2: C(64, 2) x |V|^2 = 8,064 evaluations per input, several chunks


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    tmp = tmp_path_factory.mktemp("limits")
    model = make_mlp(tmp / "m.onnx", d_in=D_IN, hidden=12, classes=3, seed=5)
    # six inputs: four flipped by one or two units, two (2 and 4) no pair of units flips over V
    x = np.random.default_rng(1).uniform(0, 1, (6, D_IN)).astype(np.float32)
    data_path = write_npz(tmp / "x.npz", x, labelled_by_model(model, x))
    clf = load_model(model, device="cpu")
    return clf, load_data(data_path, clf.geometry, tuple(clf.card.range))


def _context(clf: Any, data: Any, pos: int = 0, chunk: int = 256) -> SearchContext:
    threat = ThreatModel(lo=clf.card.lo, hi=clf.card.hi)
    return SearchContext(clf, NumpyKernels(), threat, data.x[pos], int(data.y[pos]), chunk)


def test_every_phase_gets_a_deadline_no_later_than_the_inputs(problem: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A certifier that uses all the time it is given at t = 2 (records its deadline, loops until
    it): the engine must not give it more than the input has, nor start anything once the input's
    time is up (before: the discrete sweep and the sensitivity union still ran a chunk each)."""
    clf, data = problem
    limit = 0.4
    levels: list[tuple[float, float | None]] = []  # (when the level started, the input's deadline)
    calls: list[tuple[str, float, float | None]] = []  # (phase, when it started, the deadline it was given)
    real_level, real_sweep, real_certify = Driver._level, SearchContext.sweep, SoundCertifier.certify

    def level(self: Driver, ctx: Any, t: int, state: Any, deadline: float | None, phase: Any) -> bool:
        levels.append((time.monotonic(), deadline))
        return real_level(self, ctx, t, state, deadline, phase)

    def slow_certify(self: SoundCertifier, ctx: Any, t: int, deadline: float | None) -> Certificate:
        calls.append(("certify", time.monotonic(), deadline))
        assert deadline is not None
        if t == 1:  # the real certifier decides t = 1 at once on this small net; t = 2 is what runs long
            return real_certify(self, ctx, t, deadline)
        while time.monotonic() < deadline:
            time.sleep(0.005)
        return Certificate("timeout")

    def sweep(self: SearchContext, t: int, deadline: float | None, *args: Any, **kw: Any) -> Any:
        calls.append(("sweep", time.monotonic(), deadline))
        return real_sweep(self, t, deadline, *args, **kw)

    monkeypatch.setattr(Driver, "_level", level)
    monkeypatch.setattr(SoundCertifier, "certify", slow_certify)
    monkeypatch.setattr(SearchContext, "sweep", sweep)
    started = time.monotonic()
    result = evaluate(clf, data, budget=Budget(max_t=3, input_time_limit=limit, certify_time=60.0),
                      lower="auto", upper=["none"], device="cpu")
    wall = time.monotonic() - started
    assert any(c[0] == "certify" for c in calls)
    deadlines = [d for _, d in levels]
    assert all(d is not None for d in deadlines)
    for phase, when, given in calls:
        own = max(d for s, d in levels if s <= when)  # type: ignore[type-var]  # the input's deadline
        assert given is not None and given <= own, (phase, given, own)
        assert when <= own, f"{phase} started after the input's time was up"
    for s in result.samples:
        assert s.seconds < 3 * limit, s.seconds
        assert s.level < 3 and (not s.finished or s.settled)  # cut short: not every level was taken
        assert s.lower_sound <= 2  # proven at t = 1 at most: the slow certifier proves nothing
    assert any(c[0] == "certify" and c[2] is not None for c in calls)
    assert wall < 3 * limit * len(data.x) + 30  # (30 s: loading and the certifier's one-off check)


def test_a_tiny_limit_evaluates_less_and_claims_nothing_false(problem: tuple[Any, Any]) -> None:
    clf, data = problem
    free = evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", upper=["none"], device="cpu")
    tight = evaluate(clf, data, budget=Budget(max_t=2, input_time_limit=1e-3), lower="discrete", upper=["none"], device="cpu")
    assert sum(s.evaluations for s in tight.samples) < sum(s.evaluations for s in free.samples)
    for a, b in zip(tight.samples, free.samples):
        assert a.lower_discrete <= b.lower_discrete  # no level claimed that the full run did not prove
        assert a.lower_sound <= max(b.lower_sound, 1)
        if a.upper is not None:  # any witness is real: it changes `upper` units and flips the label
            x = data.x[list(data.index).index(a.index)]
            adv = a.witness.apply(x)
            assert int(np.any(adv != x, axis=1).sum()) == a.upper
            assert clf.predict(adv[None])[0] != a.reference


def test_a_sweep_past_its_deadline_takes_its_first_chunk_only(problem: tuple[Any, Any]) -> None:
    """A sweep asked for makes progress (its first chunk, as before), and no more once out of time."""
    clf, data = problem
    ctx = _context(clf, data, 2, chunk=256)
    before = clf.evaluations
    sens = ctx.sweep(2, time.monotonic() - 1.0)
    assert sens.evaluated == 256 and clf.evaluations - before == 256  # one chunk of 64 pairs x |V|^2
    assert not sens.complete and sens.flip is None and len(sens.subsets) == 64


def test_chunks_shrink_to_end_by_the_deadline(problem: tuple[Any, Any]) -> None:
    clf, data = problem
    ctx = _context(clf, data)
    assert ctx._chunk_by(time.monotonic() + 100.0, 1024, 4) == PROBE_EVALUATIONS // 4  # unmeasured model: a probe first
    ctx.seconds_per_eval = 0.01  # 0.04 s per subset of 4 assignments
    assert ctx._chunk_by(time.monotonic() + 100.0, 64, 4) == 64  # far from the deadline: a full chunk
    m = ctx._chunk_by(time.monotonic() + 1.0, 64, 4)
    assert 1 <= m <= 25  # what fits in the second left, never more
    assert ctx._chunk_by(time.monotonic() + 0.01, 64, 4) == 0  # not one subset fits
    assert ctx._chunk_by(time.monotonic() + 0.01, 64, 4, first=True) == 1  # a sweep's first chunk: some progress
    assert ctx._chunk_by(time.monotonic() - 1.0, 64, 4, first=True) == 64  # past the deadline: as it always was


def test_an_infinite_limit_is_no_limit(problem: tuple[Any, Any]) -> None:
    """``--input-time-limit inf`` (found by the CLI fuzz test: int(inf) raised OverflowError)."""
    from helpers import invoke

    clf, data = problem
    ctx = _context(clf, data)
    ctx.seconds_per_eval = 0.01
    assert ctx._chunk_by(float("inf"), 64, 4) == 64
    res = invoke(["robustness", "--n", "1", "--max-t", "1", "--input-time-limit", "inf"])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 0, res.output


def test_a_sweep_done_within_its_limit_equals_the_unlimited_one(problem: tuple[Any, Any]) -> None:
    """Chunks change size only under a deadline; a sweep that ends within it finds what the
    unlimited one finds: the same flip, or the same complete ranking."""
    clf, data = problem
    complete = 0
    for pos in range(len(data.x)):
        free = _context(clf, data, pos).sweep(2, None)
        limited = _context(clf, data, pos).sweep(2, time.monotonic() + 600.0)
        assert free.complete == limited.complete and free.evaluated == limited.evaluated
        assert (free.flip is None) == (limited.flip is None)
        if free.flip is not None:
            assert np.array_equal(free.flip.units, limited.flip.units)
            assert np.array_equal(free.flip.values, limited.flip.values)
        assert np.array_equal(free.subsets, limited.subsets) and np.array_equal(free.values, limited.values)
        assert np.array_equal(free.sensitivity, limited.sensitivity)
        complete += free.complete
    assert complete >= 2  # the fixture's two inputs robust at t = 2 were swept to the end


def test_a_step_cut_short_is_not_restarted_after_the_deadline(problem: tuple[Any, Any]) -> None:
    clf, data = problem
    ctx = _context(clf, data, 2, chunk=256)
    spent = time.monotonic() - 1.0
    step = ctx.level(2, spent)
    assert not step.sensitivity.complete and step.sensitivity.evaluated == 256
    before = clf.evaluations
    assert ctx.level(2, spent) is step  # asked again after the deadline: the same step, no work
    assert clf.evaluations == before
    again = ctx.level(2, None)  # asked with time to spare: the step is taken again, to the end
    assert again is not step and again.sensitivity.complete and clf.evaluations > before
