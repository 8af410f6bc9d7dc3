"""The engine against brute force on inputs small enough to enumerate everything."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l0tre_core.api import evaluate
from l0tre_core.witness import flips
from l0tre_core.data import Dataset
from l0tre_core.driver import Budget
from l0tre_core.threat import ThreatModel
from numpy_models import oracle_distance, random_classifier


def dataset(clf, seed: int, n: int = 3) -> Dataset:
    rng = np.random.default_rng(seed + 1000)
    x = rng.random((n, clf.geometry.n_pixels, clf.geometry.n_channels), dtype=np.float32)
    return Dataset(x, None, np.arange(n), "random", (clf.geometry.n_pixels, clf.geometry.n_channels), "hwc")


def check_witnesses(clf, data, result):
    for pos, s in enumerate(result.samples):
        if s.upper is None:
            continue
        adv = s.witness.apply(data.x[pos])
        changed = int(np.any(adv != data.x[pos], axis=1).sum())
        assert changed == s.upper
        assert flips(clf.outputs(adv[None]), s.reference)[0]
        assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("channels", [1, 3])
def test_complete_run_finds_the_oracle_distance(seed: int, channels: int) -> None:
    side = 3 if channels == 1 else 2
    clf = random_classifier(seed, c=channels, h=side, w=side)
    data = dataset(clf, seed)
    threat = ThreatModel()
    values = threat.value_set(channels)
    result = evaluate(clf, data, threat=threat, budget=Budget(max_t=side * side), lower="discrete")
    for pos, s in enumerate(result.samples):
        want = oracle_distance(clf, data.x[pos], s.reference, values)
        if want is None:
            assert s.upper is None and s.lower == side * side + 1
        else:
            assert s.lower == s.upper == want, (pos, s.to_json(), want)
            assert s.guarantee == "discrete" or want == 1
    check_witnesses(clf, data, result)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), max_t=st.integers(1, 3), score=st.sampled_from(["margin", "logit"]))
def test_partial_runs_bracket_the_oracle_and_bounds_never_worsen(seed: int, max_t: int, score: str) -> None:
    clf = random_classifier(seed)
    data = dataset(clf, seed, n=2)
    threat = ThreatModel(score=score)
    seen: dict[int, list[tuple[int, int | None]]] = {}

    def listen(update, state):
        seen.setdefault(update.index, []).append((update.lower, update.upper))

    result = evaluate(clf, data, threat=threat, budget=Budget(max_t=max_t), lower="discrete", listeners=[listen])
    for pos, s in enumerate(result.samples):
        want = oracle_distance(clf, data.x[pos], s.reference, threat.value_set(1))
        assert s.lower <= (want if want is not None else 10**9)
        if s.upper is not None:
            assert want is not None and want <= s.upper
        assert s.upper is None or s.lower <= s.upper
        history = seen.get(s.index, [])
        for (l0, u0), (l1, u1) in zip(history, history[1:]):
            assert l1 >= l0
            assert u0 is None or (u1 is not None and u1 <= u0)
    check_witnesses(clf, data, result)


def test_same_seed_same_results() -> None:
    clf = random_classifier(7)
    data = dataset(clf, 7, n=3)
    a = evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", seed=3).to_json()
    b = evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", seed=3).to_json()
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"} for s in r["samples"]]  # noqa: E731
    assert strip(a) == strip(b)


def test_against_label_gives_radius_zero_to_misclassified_inputs() -> None:
    clf = random_classifier(11)
    data = dataset(clf, 11, n=4)
    preds = clf.predict(data.x)
    data.y = (preds + 1) % clf.n_classes
    data.y[0] = preds[0]
    result = evaluate(clf, data, threat=ThreatModel(against="label"), budget=Budget(max_t=1), lower="discrete")
    assert [s.upper for s in result.samples[1:]] == [0, 0, 0]
    assert all(s.lower == 0 and s.exact for s in result.samples[1:])
    assert result.samples[0].lower >= 1
