"""``l0tre testgen``: every generated case flips the model at its reported L0; neuron coverage on
a model small enough to work out by hand; the CLI on the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from helpers import DEMO_MODEL, _value, invoke, make_model_with, ort_outputs
from l0tre_core.data import load_data
from l0tre_core.model import load_model
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel
from l0tre_testgen.coverage import CoverageProbe, coverage_report
from l0tre_testgen.generate import generate
from numpy_models import random_classifier


@pytest.mark.parametrize("channels, values, seed", [(1, "corners", 5), (3, "corners", 6), (1, "grid:3", 5)])
def test_every_case_flips_at_its_l0(channels: int, values: str, seed: int) -> None:
    clf = random_classifier(seed=seed, c=channels, h=3, w=3, scale=0.3)
    threat = ThreatModel(values=values)
    x = np.random.default_rng(1).uniform(0, 1, (10, 9, channels)).astype(np.float32)
    refs = clf.predict(x)
    sources = set()
    for i in range(len(x)):
        ctx = SearchContext(clf, NumpyKernels(), threat, x[i], int(refs[i]), chunk=64)
        cases = generate(ctx, max_t=2, per_input=3)
        assert len(cases) <= 3
        images = [c.witness.apply(x[i]) for c in cases]
        assert len({im.tobytes() for im in images}) == len(images)  # deduplicated
        for c, adv in zip(cases, images):
            changed = int(np.any(adv != x[i], axis=1).sum())
            assert changed == c.l0 >= 1
            assert c.level in (1, 2) and c.source in ("sweep", "union", "targeted")
            assert np.all((adv >= 0) & (adv <= 1))
            label = int(np.argmax(clf.outputs(adv[None])[0]))
            assert label == c.label_new != refs[i]
            if c.source == "sweep":
                assert c.l0 <= c.level
        sources |= {c.source for c in cases}
    assert {"sweep", "union"} <= sources  # both kinds of witness were generated and checked


def coverage_model(path) -> object:
    """x[2] -> h1 = relu(x - 0.5) [2 neurons] -> h2 = relu(h1_0 + h1_1 - 0.3) [1 neuron] -> 2 logits."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z1"]),
        helper.make_node("Relu", ["z1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["z2"]),
        helper.make_node("Relu", ["z2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["logits"]),
    ]
    inits = {
        "w1": np.eye(2, dtype=np.float32), "b1": np.array([-0.5, -0.5], np.float32),
        "w2": np.ones((2, 1), np.float32), "b2": np.array([-0.3], np.float32),
        "w3": np.array([[1.0, -1.0]], np.float32), "b3": np.zeros(2, np.float32),
    }
    return make_model_with(path, nodes, [_value("x", ("N", 2))], [_value("logits", ("N", 2))], inits, name="cov")


def test_coverage_by_hand(tmp_path) -> None:
    clf = load_model(coverage_model(tmp_path / "cov.onnx"), card={"layout": "flat"})
    a = [[0.9], [0.1]]  # h1 = (0.4, 0), h2 = relu(0.1) > 0: 2 of 3 neurons
    b = [[0.1], [0.9]]  # h1 = (0, 0.4), h2 > 0: 2 of 3
    c = [[0.1], [0.1]]  # nothing
    d = [[0.6], [0.1]]  # h1 = (0.1, 0), h2 = relu(-0.2) = 0: 1 of 3
    x = lambda *rows: np.asarray(rows, np.float32)  # canonical [N, P=2, C=1]
    probe = CoverageProbe.from_onnx(clf.onnx_model, clf.runtime.input_name)
    assert probe is not None and probe.relu_outputs == ["h1", "h2"]
    assert probe.activated(clf.model_input(x(a))).tolist() == [True, False, True]
    assert probe.activated(clf.model_input(x(c, d))).tolist() == [True, False, False]
    report = coverage_report(clf, x(c, d), x(a, b))
    assert report["available"] and report["neurons"] == 3 and report["relu_layers"] == 2
    assert report["clean"] == pytest.approx(1 / 3)
    assert report["generated"] == pytest.approx(1.0)
    assert report["combined"] == pytest.approx(1.0)
    assert coverage_report(clf, x(c), x())["generated"] == 0.0


def test_coverage_without_relu(tmp_path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"])]
    path = make_model_with(tmp_path / "lin.onnx", nodes, [_value("x", ("N", 4))], [_value("logits", ("N", 2))],
                           {"w": np.ones((4, 2), np.float32), "b": np.zeros(2, np.float32)})
    clf = load_model(path, card={"layout": "flat"})
    report = coverage_report(clf, np.zeros((1, 4, 1), np.float32), np.zeros((0, 4, 1), np.float32))
    assert report == {"available": False, "reason": "the model has no Relu nodes"}


def test_cli_on_demo(tmp_path) -> None:
    out = tmp_path / "tg"
    result = invoke(["testgen", "--n", "3", "--max-t", "1", "--out", out, "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["inputs"] == 3
    assert json.loads((out / "results.json").read_text())["summary"] == report["summary"]
    with np.load(out / "tests.npz") as f:
        arrays = {k: f[k] for k in f.files}
    m = report["summary"]["cases"]
    adversarial = arrays["kind"] == "adversarial"
    assert m == int(adversarial.sum()) and m > 0
    assert len(arrays["l0"]) == len(arrays["x"]) == m + report["summary"]["coverage_tests"]
    assert arrays["x"].shape[1:] == (28, 28)  # the data file's sample shape, data space
    clf = load_model(DEMO_MODEL)
    clean = load_data(None, clf.geometry, clf.card.range, n=3)
    logits = ort_outputs(DEMO_MODEL, arrays["x"].reshape(-1, 1, 28, 28))  # independent of the engine
    assert np.all(np.argmax(logits, axis=1) == arrays["label_new"])
    assert np.all(arrays["label_new"][adversarial] != arrays["label_clean"][adversarial])
    for k, i in enumerate(arrays["index"]):
        changed = int(np.sum(arrays["x"][k].reshape(-1) != clean.x[i].reshape(-1)))
        assert changed == arrays["l0"][k]
    assert report["coverage"]["available"] and 0 < report["coverage"]["clean"] <= report["coverage"]["combined"] <= 1
    assert report["summary"]["inputs_with_cases"] == len(set(arrays["index"][adversarial].tolist()))


def test_coverage_of_a_fixed_batch_model_matches_the_dynamic_one(tmp_path) -> None:
    from helpers import make_cnn

    x = np.random.default_rng(2).uniform(0, 1, (5, 16, 1)).astype(np.float32)
    reports = []
    for fixed in (False, True):
        clf = load_model(make_cnn(tmp_path / f"cnn{fixed}.onnx", fixed_batch=fixed, seed=4))
        reports.append(coverage_report(clf, x[:2], x[2:]))
    assert reports[0] == reports[1] and reports[0]["neurons"] == 4 * 16


def test_time_limit_for_the_whole_run_stops_between_inputs() -> None:
    result = invoke(["testgen", "--n", "20", "--time-limit", "0.01", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["samples"]) < 20  # the run ended before every input was reached
    bad = invoke(["testgen", "--n", "2", "--time-limit", "0"])
    assert bad.exit_code == 2 and "--time-limit" in bad.stderr


# --- coverage-guided generation (NC / NBC, --max-l0) --------------------------------------------------


def threshold_model(path) -> object:
    """x[4] -> z = [x0 + x1 - 1.5, x2 - 0.5, -x3 - 0.5] -> relu -> 2 logits. With V = {0, 1} from
    x = 0: neuron 0 needs both x0 and x1 at 1 (L0 = 2), neuron 1 needs x2 (L0 = 1), neuron 2 is dead."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"]),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
    ]
    w1 = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, -1]], np.float32)
    inits = {"w1": w1, "b1": np.array([-1.5, -0.5, -0.5], np.float32),
             "w2": np.array([[1.0, -1.0], [0.5, -0.5], [0.0, 0.0]], np.float32), "b2": np.array([0.0, 0.1], np.float32)}
    return make_model_with(path, nodes, [_value("x", ("N", 4))], [_value("logits", ("N", 2))], inits, name="thr")


def guided(clf, criterion, max_l0: int):
    from l0tre_testgen.guided import Generator

    probe = CoverageProbe.from_onnx(clf.onnx_model, clf.runtime.input_name)
    return Generator(clf, probe, criterion, np.array([[0.0], [1.0]], np.float32), max_l0, 100)


def test_guided_nc_by_hand(tmp_path) -> None:
    from l0tre_testgen.criteria import Criterion
    from l0tre_testgen.guided import cover_input

    clf = load_model(threshold_model(tmp_path / "thr.onnx"), card={"layout": "flat"})
    x = np.zeros((4, 1), np.float32)
    crit = Criterion("nc", 3)
    rec = cover_input(guided(clf, crit, max_l0=2), x, np.zeros(3, bool))
    by_target = {t.target: t for t in rec.tests}
    assert set(by_target) == {0, 1}  # the dead neuron has no pixel that moves it: no test
    assert by_target[1].l0 == 1 and by_target[1].units.tolist() == [2]
    assert by_target[0].l0 == 2 and sorted(by_target[0].units.tolist()) == [0, 1]
    assert by_target[0].label_after == 0  # h0 = 0.5 > 0 pushes logit 0 up: label changed from 1
    assert int(clf.predict(x[None])[0]) == 1
    # a budget of one pixel cannot cover neuron 0; an already covered target is not tried again
    rec1 = cover_input(guided(clf, crit, max_l0=1), x, np.zeros(3, bool))
    assert [t.target for t in rec1.tests] == [1] and all(t.l0 <= 1 for t in rec1.tests)
    assert cover_input(guided(clf, crit, max_l0=2), x, np.array([False, True, True])).tests[0].target == 0


def test_guided_nbc_by_hand(tmp_path) -> None:
    from l0tre_testgen.criteria import nbc_criterion
    from l0tre_testgen.guided import cover_input

    clf = load_model(threshold_model(tmp_path / "thr.onnx"), card={"layout": "flat"})
    calib = np.full((3, 4, 1), 0.5, np.float32)  # z = [-0.5, 0, -1] on every calibration input
    probe = CoverageProbe.from_onnx(clf.onnx_model, clf.runtime.input_name)
    crit = nbc_criterion(probe.pre_activations(clf.model_input(calib)), {"inputs": 3})
    assert crit.targets == 6 and crit.hi.tolist() == [-0.5, 0.0, -1.0]
    rec = cover_input(guided(clf, crit, max_l0=4), calib[0], np.zeros(6, bool))
    covered = np.zeros(6, bool)
    for t in rec.tests:
        covered[t.new] = True
        assert 1 <= t.l0 <= 4
    # every boundary is reachable by moving pixels of 0.5 to 0 or 1
    assert covered.all()


def test_cli_coverage_guided_on_demo_is_verified_independently(tmp_path) -> None:
    """Every coverage test keeps to --max-l0 and covers, in the ONNX reference evaluator (not
    onnxruntime), the neurons the manifest says it newly covers; the curve grows with L0."""
    from onnx.reference import ReferenceEvaluator

    import onnx

    out = tmp_path / "tg"
    result = invoke(["testgen", "--n", "1", "--per-input", "1", "--max-l0", "8", "--out", out, "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    cov = report["coverage"]
    assert cov["criterion"] == "nc" and cov["targets"] == cov["neurons"] == 1472
    curve = [c["coverage"] for c in cov["curve"]]
    assert curve[0] == pytest.approx(cov["clean"]) and curve == sorted(curve) and curve[8] > curve[0]
    assert cov["at"]["3"] <= cov["at"]["8"] == curve[8]
    manifest = json.loads((out / "testgen.json").read_text())
    with np.load(out / "tests.npz") as f:
        arrays = {k: f[k] for k in f.files}
    guided_rows = [t for t in manifest["tests"] if t["kind"] == "coverage"]
    assert len(guided_rows) == report["summary"]["coverage_tests"] > 10
    clf = load_model(DEMO_MODEL)
    clean = load_data(None, clf.geometry, clf.card.range, n=1).x[0].reshape(28, 28)
    model = onnx.load(DEMO_MODEL)
    relu_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Relu"]
    for name in relu_inputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    ref = ReferenceEvaluator(model)
    rows = [t["row"] for t in guided_rows[:12]]  # the reference evaluator is slow: a sample
    for row in rows:
        t = manifest["tests"][row]
        img = arrays["x"][row]
        assert int(np.sum(img != clean)) == t["l0"] == arrays["l0"][row] and 1 <= t["l0"] <= 8
        outs = ref.run(None, {"image": img.reshape(1, 1, 28, 28).astype(np.float32)})
        pre = np.concatenate([o.reshape(-1) for o in outs[1:]])
        assert int(np.argmax(outs[0])) == t["label_after"] == arrays["label_new"][row]
        assert t["newly_covered"] and all(pre[j] > 0 for j in t["newly_covered"])
        assert arrays["kind"][row] == "coverage"
    assert (out / "coverage.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_nbc_and_its_calibration(tmp_path) -> None:
    result = invoke(["testgen", "--n", "2", "--per-input", "1", "--criterion", "nbc", "--max-l0", "3", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    cov = json.loads(result.stdout)["coverage"]
    assert cov["criterion"] == "nbc" and cov["targets"] == 2 * cov["neurons"]
    assert cov["definition"]["calibration"]["inputs"] == 498  # the demo's 500 inputs less the two evaluated
    assert cov["combined"] > cov["clean"]
    calib = tmp_path / "calib.npz"
    from helpers import write_npz

    clf = load_model(DEMO_MODEL)
    write_npz(calib, load_data(None, clf.geometry, clf.card.range, n=50, start=100).x.reshape(50, 28, 28))
    result = invoke(["testgen", "--n", "1", "--per-input", "1", "--criterion", "nbc", "--calibration", calib,
                     "--max-l0", "2", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["coverage"]["definition"]["calibration"]["inputs"] == 50


@pytest.mark.parametrize("args, message", [
    (["--criterion", "kmnc"], "--criterion"),
    (["--max-l0", "-1"], "--max-l0"),
    (["--max-targets", "0"], "--max-targets"),
    (["--calibration", "x.npz"], "--calibration"),
    (["--criterion", "nbc", "--n", "500"], "calibration"),
])
def test_bad_coverage_options(args, message) -> None:
    from helpers import assert_one_line_error

    result = invoke(["testgen", "--n", "1", *args])
    assert result.exit_code == 2, result.stderr
    assert_one_line_error(result.stderr, contains=message)


def test_several_cases_per_input_on_demo() -> None:
    """--per-input is honoured: the targeted cases add distinct verified cases beyond the union."""
    result = invoke(["testgen", "--n", "3", "--per-input", "4", "--no-coverage", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert all(s["cases"] >= 2 for s in report["samples"])
    assert {c["source"] for c in report["cases"]} >= {"union", "targeted"}
