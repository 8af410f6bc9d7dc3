"""The model-call batch size the search chooses for itself (``l0tre_core.batching``)."""

from __future__ import annotations

import numpy as np
import pytest

from l0tre_core.batching import STUCK_CALLS, BatchTuner


def _drive(tuner: BatchTuner, per_row: dict[int, float], group: int = 4096, calls: int = 1000) -> None:
    for _ in range(calls):
        left = group
        while left:
            size = min(tuner.size(left), left)
            tuner.record(size, per_row.get(size, 1.0) * size)
            left -= size
        if tuner.chosen is not None:
            return


def test_fixed_size_is_never_tuned() -> None:
    tuner = BatchTuner(fixed=100)
    assert tuner.chosen == 100 and tuner.size(4096) == 100
    tuner.record(100, 1.0)
    assert tuner.chosen == 100


def test_settles_on_the_fastest_size_per_row() -> None:
    tuner = BatchTuner(candidates=(64, 256, 1024))
    _drive(tuner, {64: 3e-6, 256: 1e-6, 1024: 2e-6})
    assert tuner.chosen == 256
    assert tuner.size(4096) == 256


def test_fastest_call_counts_not_the_mean() -> None:
    # a size slowed once by another process is still judged by its undisturbed calls
    tuner = BatchTuner(candidates=(64, 256), rounds=1, trial_rows=512)
    times = iter([1e-6 * 64] * 8 + [50e-6 * 256, 0.5e-6 * 256])
    while tuner.chosen is None:
        size = tuner.size(4096)
        tuner.record(size, next(times))
    assert tuner.chosen == 256


def test_groups_too_small_for_a_size_do_not_stall_tuning() -> None:
    # t = 1 on a small image: groups of 300 rows can never time sizes of 512 and more
    tuner = BatchTuner(candidates=(64, 128, 512, 1024))
    _drive(tuner, {64: 2e-6, 128: 1e-6}, group=300, calls=10 * STUCK_CALLS)
    assert tuner.chosen == 128
    assert tuner.rows[512] == 0 and tuner.rows[1024] == 0


def test_tiny_calls_leave_tuning_alone() -> None:
    tuner = BatchTuner(candidates=(64, 128))
    for _ in range(5 * STUCK_CALLS):
        assert tuner.size(32) == 32  # the random search's batches run whole
    assert tuner.chosen is None and tuner.size(4096) == 64


def test_the_search_gives_the_same_sweep_whatever_the_batch_size() -> None:
    from l0tre_core import load_data, load_model
    from l0tre_core.sweep import SearchContext
    from l0tre_core.tensors import NumpyKernels
    from l0tre_core.threat import ThreatModel

    results = []
    for batch_size in (None, 64, 1000):
        clf = load_model(None, batch_size=batch_size)
        data = load_data(None, clf.geometry, clf.card.range, n=1)
        ref = int(clf.predict(data.x)[0])
        ctx = SearchContext(clf, NumpyKernels(), ThreatModel(lo=0.0, hi=1.0), data.x[0], ref, 4096)
        sens = ctx.sweep(1, deadline=None)
        results.append((sens.complete, sens.flip is None, sens.subsets[:20].tolist(), sens.evaluated))
        assert clf.evaluations == sens.evaluated + 2  # the prediction, the clean score, the sweep
    assert results[0] == results[1] == results[2]


def test_the_one_pass_reduction_equals_score_and_flips() -> None:
    from l0tre_core.witness import flips, score, score_and_flips

    rng = np.random.default_rng(4)
    out = rng.normal(size=(400, 6)).astype(np.float32)
    out[::7] = np.round(out[::7])  # many ties, before and after the reference column
    out[3, 1] = np.nan
    out[5, 4] = np.inf
    out[9] = 0.0  # a tie everywhere
    for ref in range(6):
        for kind, probs in (("margin", False), ("logit", False), ("margin", True)):
            data = np.abs(out) if probs else out
            s, f = score_and_flips(data, ref, kind, probs)
            np.testing.assert_array_equal(f, flips(data, ref))
            np.testing.assert_array_equal(s, score(data, ref, kind, probs))


@pytest.mark.parametrize("seed", [0, 1, 3, 4])
def test_the_sweeps_top_k_is_the_k_most_sensitive_subsets(seed: int) -> None:
    # chunks of 4 subsets and a top 10: the running cut drops subsets as the sweep goes; the kept
    # ones must still be exactly the 10 lowest minimum scores of all C(25, 2) subsets
    import itertools

    from numpy_models import random_classifier

    from l0tre_core.sweep import SearchContext
    from l0tre_core.tensors import NumpyKernels
    from l0tre_core.threat import ThreatModel

    clf = random_classifier(seed, h=5, w=5, scale=0.1)  # seeds 0, 1, 3, 4: no pair flips them
    x = np.random.default_rng(seed).random((25, 1), dtype=np.float32)
    ref = int(clf.predict(x[None])[0])
    ctx = SearchContext(clf, NumpyKernels(), ThreatModel(), x, ref, 16)
    sens = ctx._sweep(2, None, 10)
    assert sens.flip is None, "the seeds are chosen so that no pair flips: the sweep must run to the end"
    pairs = np.array(list(itertools.combinations(range(25), 2)))
    best = []
    for a in ([0.0], [1.0]):
        for b in ([0.0], [1.0]):
            vals = np.broadcast_to(np.array([a, b], np.float32), (len(pairs), 2, 1))
            best.append(ctx.score(clf.outputs(np.stack([_apply(x, p, v) for p, v in zip(pairs, vals)]))))
    mins = np.min(best, axis=0)
    want = np.sort(ctx.clean_score - np.sort(mins)[:10])[::-1]
    np.testing.assert_allclose(np.sort(sens.sensitivity)[::-1], want, rtol=0, atol=1e-9)


def _apply(x: np.ndarray, units: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[units] = values
    return out
