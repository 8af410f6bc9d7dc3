"""The attack plugin: the ``random-search`` upper-bound method and the ``l0tre attack`` command.

Properties: random search never returns a witness larger than the one it starts from; every
witness it returns flips the label and changes exactly as many pixels as it says; it never goes
below the brute-force d* over V (that would be a bug) and on average does at least as well as
L0-TRE's union and tightening; the same seed gives the same result.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import DEMO_MODEL, assert_one_line_error, invoke, make_cnn, make_mlp, ort_outputs
from l0tre_attack.run import run_attack, summarise
from l0tre_attack.random_search import RandomSearch, UnitPrior, spatial_prior
from l0tre_core.api import evaluate
from l0tre_core.witness import SampleState, Witness, flips
from l0tre_core.data import Dataset
from l0tre_core.driver import Budget
from l0tre_core.model import load_model
from l0tre_core.host import create_host
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel
from numpy_models import oracle_distance, random_classifier

THREAT = ThreatModel()


def dataset(clf, seed: int, n: int) -> Dataset:
    rng = np.random.default_rng(seed + 1000)
    x = rng.random((n, clf.geometry.n_pixels, clf.geometry.n_channels), dtype=np.float32)
    return Dataset(x, None, np.arange(n), "random", (clf.geometry.n_pixels, clf.geometry.n_channels), "hwc")


def context(clf, x: np.ndarray, threat: ThreatModel = THREAT) -> SearchContext:
    ref = int(clf.predict(x[None])[0])
    return SearchContext(clf, NumpyKernels(), threat, x, ref, 4096)


def sensitivity_witness(ctx: SearchContext) -> tuple[Witness | None, int, object]:
    """L0-TRE at t = 1: a single-pixel flip, or union + tightening; and the lower bound over V."""
    sens = ctx.sweep(1, None)
    if sens.flip is not None:
        return Witness.between(ctx.x_units, sens.flip.apply(ctx.x_units)), 1, sens
    union = ctx.cumulative_union(sens)
    return (None if union is None else ctx.tighten(union)), 2, sens


def check_witness(clf, x: np.ndarray, ref: int, w: Witness, values: np.ndarray) -> None:
    """``w`` flips the label through the model's ordinary path and changes exactly ``w.size`` pixels to values of V."""
    adv = w.apply(x)
    changed = np.flatnonzero(np.any(adv != x, axis=1))
    assert len(changed) == w.size == len(set(w.units.tolist()))
    assert sorted(changed.tolist()) == sorted(w.units.tolist())
    assert flips(clf.outputs(adv[None]), ref)[0]
    if values is not None:  # None: any value in the valid range (the last resort's donors)
        assert all(any(np.array_equal(v, row) for row in values) for v in w.values)
    assert np.all(adv >= THREAT.lo) and np.all(adv <= THREAT.hi)


def fast_oracle(clf, x: np.ndarray, ref: int, values: np.ndarray, t_max: int) -> int | None:
    """d* over V by brute force, one batch per subset size (numpy_models.oracle_distance, batched)."""
    p = x.shape[0]
    for t in range(1, t_max + 1):
        assigns = np.array(list(itertools.product(range(len(values)), repeat=t)), np.int64)  # [A, t]
        combos = np.array(list(itertools.combinations(range(p), t)), np.int64)  # [S, t]
        for start in range(0, len(combos), 2048):
            s = combos[start : start + 2048]
            adv = np.repeat(x[None], len(s) * len(assigns), axis=0)
            rows = np.arange(len(adv))[:, None]
            adv[rows, np.repeat(s, len(assigns), axis=0)] = values[np.tile(assigns, (len(s), 1))]
            if flips(clf.outputs(adv), ref).any():
                return t
    return None


# --- the method on pure-NumPy models ----------------------------------------------------------------


def test_fast_oracle_agrees_with_the_reference_oracle() -> None:
    for seed in range(3):
        clf = random_classifier(seed)
        data = dataset(clf, seed, 3)
        for x in data.x:
            ref = int(clf.predict(x[None])[0])
            values = THREAT.value_set(1)
            assert fast_oracle(clf, x, ref, values, 9) == oracle_distance(clf, x, ref, values)


@pytest.mark.parametrize("channels", [1, 3])
def test_random_search_never_grows_and_every_witness_flips(channels: int) -> None:
    scale = 0.7 if channels == 1 else 0.4
    values = THREAT.value_set(channels)
    searched = 0
    for seed in range(6):
        clf = random_classifier(seed, c=channels, h=4, w=4, hidden=12, scale=scale)
        for x in dataset(clf, seed, 6).x:
            ctx = context(clf, x)
            w, lower, sens = sensitivity_witness(ctx)
            if w is None or w.size == 1:
                continue
            searched += 1
            rs = RandomSearch(queries=300, batch=16)
            for prior in (None, UnitPrior.from_sensitivity(sens, ctx.encoder.n_units, ctx.values)):
                out = rs.search(ctx, w, np.random.default_rng(seed), lower=lower, prior=prior)
                assert out.evaluations <= 300 + 2 * (w.size + 1)  # the budget, plus verifications
                if out.witness is not None:
                    assert out.witness.size < w.size
                    check_witness(clf, x, ctx.ref, out.witness, values)
                    assert [size for _, size in out.trace] == sorted({s for _, s in out.trace}, reverse=True)
                    assert out.trace[-1][1] == out.witness.size
                else:
                    assert out.trace == []
    assert searched >= 8


def test_random_search_finds_oracle_minimal_witnesses_and_never_goes_below_d_star() -> None:
    values = THREAT.value_set(1)
    rows = []
    for seed in range(10):
        clf = random_classifier(seed, h=4, w=4, hidden=12, scale=0.7)
        for x in dataset(clf, seed, 5).x:
            ctx = context(clf, x)
            w, lower, sens = sensitivity_witness(ctx)
            if w is None or w.size == 1:
                continue
            out = RandomSearch(queries=500).search(ctx, w, np.random.default_rng(seed), lower=lower)
            shrunk = w if out.witness is None else out.witness
            d_star = fast_oracle(clf, x, ctx.ref, values, w.size)
            assert d_star is not None and d_star <= shrunk.size <= w.size, (seed, d_star, shrunk.size, w.size)
            rows.append((d_star, w.size, shrunk.size))
    d_star, union, shrunk = np.array(rows).T
    assert len(rows) >= 15
    assert shrunk.mean() <= union.mean()
    assert (shrunk == d_star).sum() >= (union == d_star).sum()
    assert (shrunk == d_star).mean() >= 0.8  # the oracle-minimal witness, often
    assert (shrunk < union).any()  # and it does find smaller ones than the union


def test_same_seed_same_result_and_other_seeds_still_valid() -> None:
    clf = random_classifier(3, h=4, w=4, hidden=12, scale=0.7)
    x = dataset(clf, 3, 4).x
    for xi in x:
        ctx = context(clf, xi)
        w, lower, _ = sensitivity_witness(ctx)
        if w is None:
            continue
        a = RandomSearch(queries=400).search(ctx, w, np.random.default_rng(11), lower=lower)
        b = RandomSearch(queries=400).search(ctx, w, np.random.default_rng(11), lower=lower)
        assert a.evaluations == b.evaluations and a.trace == b.trace
        assert (a.witness is None) == (b.witness is None)
        if a.witness is not None:
            assert np.array_equal(a.witness.units, b.witness.units)
            assert np.array_equal(a.witness.values, b.witness.values)


def test_finds_an_example_from_nothing_within_the_cap() -> None:
    found = 0
    for seed in range(6):
        clf = random_classifier(seed, h=4, w=4, hidden=12, scale=0.7)
        for x in dataset(clf, seed, 3).x:
            ctx = context(clf, x)
            out = RandomSearch(queries=400, k_cap=8).search(ctx, None, np.random.default_rng(seed))
            if out.witness is not None:
                found += 1
                check_witness(clf, x, ctx.ref, out.witness, THREAT.value_set(1))
                assert out.witness.size <= 8
    assert found >= 10


def test_improve_respects_the_state_and_the_budgets() -> None:
    clf = random_classifier(5, h=4, w=4, hidden=12, scale=0.7)
    for x in dataset(clf, 5, 6).x:
        ctx = context(clf, x)
        w, lower, _ = sensitivity_witness(ctx)
        if w is None or w.size < 3:
            continue
        state = SampleState(index=0, label=None, reference=ctx.ref, upper=w.size, witness=w)
        state.raise_lower(lower, "discrete")
        rs = RandomSearch(queries=300)
        got = rs.improve(ctx, state, 1, None, np.random.default_rng(0))
        assert got is None or got.size < w.size
        # exact: nothing to do, not even a model call
        exact = SampleState(index=0, label=None, reference=ctx.ref, upper=w.size, witness=w)
        exact.raise_lower(w.size, "discrete")
        before = clf.evaluations
        assert rs.improve(ctx, exact, 1, None, np.random.default_rng(0)) is None
        # no budget, or a deadline already past: no model call either
        assert RandomSearch(queries=0).improve(ctx, state, 1, None, np.random.default_rng(0)) is None
        assert rs.improve(ctx, state, 1, 0.0, np.random.default_rng(0)) is None
        assert clf.evaluations == before
        return
    pytest.fail("no input with a witness of 3 pixels or more")


def test_priors_are_distributions_over_units() -> None:
    clf = random_classifier(2, h=4, w=4, hidden=12, scale=0.7)
    for x in dataset(clf, 2, 6).x:
        ctx = context(clf, x)
        sens = ctx.sweep(1, None)
        if sens.complete:
            break
    prior = UnitPrior.from_sensitivity(sens, 16, ctx.values)
    assert prior is not None
    draws = prior.draw(np.random.default_rng(0), (2000,))
    assert draws.min() >= 0 and draws.max() < 16
    top = int(sens.subsets[0, 0])
    assert np.mean(draws == top) > 1 / 16  # the most sensitive unit is drawn more than uniformly
    sp = spatial_prior(clf.geometry, Witness(np.array([0]), np.ones((1, 1), np.float32)), 16)
    assert sp is not None and np.mean(sp.draw(np.random.default_rng(0), (2000,)) == 0) > 1 / 16
    with pytest.raises(ValueError):
        RandomSearch(queries=-1)


def test_evaluate_with_random_search_never_worse_than_without() -> None:
    for seed in range(4):
        clf = random_classifier(seed, h=4, w=4, hidden=12, scale=0.7)
        data = dataset(clf, seed, 4)
        kwargs = dict(budget=Budget(max_t=1), lower="discrete", seed=seed)
        plain = evaluate(clf, data, upper=["none"], **kwargs)
        searched = evaluate(clf, data, upper=["random-search"], **kwargs)
        assert searched.budget["upper"] == ["sensitivity", "random-search"]
        for a, b in zip(plain.samples, searched.samples):
            assert a.upper is None or (b.upper is not None and b.upper <= a.upper)
            if b.upper is not None:
                check_witness(clf, data.x[a.index], b.reference, b.witness, THREAT.value_set(1))


def test_evaluate_with_random_search_on_onnx_models(tmp_path: Path) -> None:
    host = create_host()
    for path in (make_cnn(tmp_path / "cnn.onnx", c=3, h=4, w=4, seed=1), make_mlp(tmp_path / "mlp.onnx", seed=2)):
        clf = load_model(path, host=host)
        data = dataset(clf, 0, 4)
        kwargs = dict(budget=Budget(max_t=1), lower="discrete", host=host)
        plain = evaluate(clf, data, upper=["none"], **kwargs)
        searched = evaluate(clf, data, upper=["random-search"], **kwargs)
        for pos, (a, b) in enumerate(zip(plain.samples, searched.samples)):
            assert a.upper is None or (b.upper is not None and b.upper <= a.upper)
            if b.witness is not None:
                adv = b.witness.apply(data.x[pos])
                out = ort_outputs(path, clf.geometry.to_model(adv[None]))
                assert int(np.argmax(out[0])) != b.reference


# --- the run and the command --------------------------------------------------------------------------


def test_run_attack_reports_verified_examples_and_a_consistent_summary() -> None:
    clf = random_classifier(8, h=4, w=4, hidden=12, scale=0.7)
    data = dataset(clf, 8, 6)
    result = run_attack(clf, data, budget=300, k_max=16, seed=1, device="cpu")
    assert result.complete and len(result.records) == 6
    for pos, r in enumerate(result.records):
        if r.witness is not None:
            check_witness(clf, data.x[pos], r.reference, r.witness, THREAT.value_set(1))
            assert r.l0_sensitivity is None or r.l0 <= r.l0_sensitivity
            assert r.l0 >= r.lower
            assert r.adversarial_label == int(clf.predict(r.witness.apply(data.x[pos])[None])[0]) != r.reference
    s = result.summary
    l0 = [r.l0 for r in result.records]
    assert s["success_at"]["32"] == np.mean([v is not None and v <= 32 for v in l0])
    assert s["median_l0"] == float(np.median([np.inf if v is None else v for v in l0]))
    again = run_attack(clf, data, budget=300, k_max=16, seed=1, device="cpu")
    assert [r.to_json() | {"seconds": 0} for r in again.records] == [r.to_json() | {"seconds": 0} for r in result.records]
    # k-max only bounds where the random search starts: no cap hides a verified example
    tight = run_attack(clf, data, budget=0, k_max=1, device="cpu")
    assert all(r.witness is not None for r in tight.records)
    for pos, r in enumerate(tight.records):
        check_witness(clf, data.x[pos], r.reference, r.witness, None)


def test_misclassified_inputs_against_their_label_have_l0_zero() -> None:
    clf = random_classifier(11)
    data = dataset(clf, 11, 3)
    data.y = (clf.predict(data.x) + 1) % clf.n_classes
    result = run_attack(clf, data, threat=ThreatModel(against="label"), budget=100, device="cpu")
    assert [r.l0 for r in result.records] == [0, 0, 0]
    assert summarise(result.records)["success_at"]["1"] == 1.0


def test_the_registry_holds_the_method_and_the_app_the_command() -> None:
    host = create_host()
    method = host.registry("bound_methods")["random-search"]
    assert method.kind == "upper" and method.description
    assert host.owner("bound_methods", "random-search") == "attack"
    result = invoke(["attack", "--help"])
    assert result.exit_code == 0 and "--budget" in result.stdout and "--k-max" in result.stdout


def test_cli_on_the_demo_writes_files_that_flip_the_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(["attack", "--n", "3", "--budget", "500", "--out", out, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["inputs"] == 3 and len(report["samples"]) == 3
    assert json.loads((out / "results.json").read_text())["summary"] == report["summary"]
    assert (out / "adversarial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = np.load(out / "adversarial.npz")
    found = [s for s in report["samples"] if s["success"]]
    assert saved["index"].tolist() == [s["index"] for s in found] and len(found) >= 1
    clean = np.load(DEMO_MODEL.parent / "mnist_heldout_500.npz")["x"][:3].astype(np.float32) / 255.0
    assert saved["x_adv"].shape == (len(found), 28, 28)
    logits = ort_outputs(DEMO_MODEL, saved["x_adv"][:, None])
    for s, adv, out_row in zip(found, saved["x_adv"], logits):
        assert int(np.argmax(out_row)) == s["adversarial_label"] != s["reference"]
        assert int((adv != clean[s["index"]]).sum()) == s["l0"] == len(s["witness"]["units"])


def test_cli_table_and_summary() -> None:
    result = invoke(["attack", "--n", "2", "--budget", "200", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert "L0 attack" in result.stdout and "median L0" in result.stdout and "<=32:" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("args, contains", [
    (["--budget", "-1"], "--budget"),
    (["--k-max", "0"], "--k-max"),
    (["--values", "grid:1"], "grid"),
    (["--time-limit", "0"], "--time-limit"),
])
def test_bad_options_are_one_line_usage_errors(args: list[str], contains: str) -> None:
    result = invoke(["attack", "--n", "1", *args])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert_one_line_error(result.stderr, contains=contains)


def test_ctrl_c_keeps_the_inputs_done_and_the_command_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clf = random_classifier(8, h=4, w=4, hidden=12, scale=0.7)
    data = dataset(clf, 8, 4)

    def stop(record, done, total):
        if done == 2:
            raise KeyboardInterrupt

    result = run_attack(clf, data, budget=50, device="cpu", listeners=[stop])
    assert result.interrupted and not result.complete and len(result.records) == 2

    import l0tre_attack.run as run_module

    real = run_module._attack_one
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "_attack_one", interrupt_second)
    out = tmp_path / "partial"
    res = invoke(["attack", "--n", "3", "--budget", "100", "--out", out, "--quiet"])
    assert res.exit_code == 130, (res.exit_code, res.stderr)
    assert "interrupted after 1 of 3 inputs" in res.stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["interrupted"] and len(saved["samples"]) == 1
