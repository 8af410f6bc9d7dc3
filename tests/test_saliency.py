"""``l0tre saliency``: the t = 1 map equals brute force, pixel by pixel; the CLI writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import invoke
from l0tre_core.witness import score
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel
from l0tre_saliency.saliency import saliency_map
from numpy_models import random_classifier


def brute_force(clf, x: np.ndarray, ref: int, threat: ThreatModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: clean score - min score over V, the minimising value, and whether any value flips,
    each image run on its own through the ordinary input path."""
    values = threat.value_set(clf.geometry.n_channels)
    probs = clf.card.output == "probs"
    clean = score(clf.outputs(x[None]), ref, threat.score, probs)[0]
    n = clf.geometry.n_pixels
    sens, worst, flips = np.zeros(n), np.zeros((n, values.shape[1]), np.float32), np.zeros(n, bool)
    for p in range(n):
        scores = []
        for v in values:
            adv = x.copy()
            adv[p] = v
            out = clf.outputs(adv[None])
            scores.append(score(out, ref, threat.score, probs)[0])
            flips[p] |= int(np.argmax(out[0])) != ref
        k = int(np.argmin(scores))
        sens[p], worst[p] = clean - scores[k], values[k]
    return sens, worst, flips


@pytest.mark.parametrize(
    "channels, values, kind",
    [(1, "corners", "margin"), (1, "grid:3", "logit"), (3, "corners", "margin"), (3, "grid:2", "logit")],
)
def test_map_equals_brute_force(channels: int, values: str, kind: str) -> None:
    clf = random_classifier(seed=3, c=channels, h=3, w=3)
    threat = ThreatModel(values=values, score=kind)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 9, channels)).astype(np.float32)
    refs = clf.predict(x)
    seen_flip = seen_safe = False
    for i in range(len(x)):
        # a small chunk makes the sweep span several chunks, so a flip cuts it short midway
        ctx = SearchContext(clf, NumpyKernels(), threat, x[i], int(refs[i]), chunk=8)
        smap = saliency_map(ctx)
        sens, worst, flips = brute_force(clf, x[i], int(refs[i]), threat)
        np.testing.assert_array_equal(smap.sensitivity, sens)
        np.testing.assert_array_equal(smap.worst, worst)
        np.testing.assert_array_equal(smap.flips, flips)
        seen_flip |= bool(flips.any())
        seen_safe |= not flips.any()
    assert seen_flip and seen_safe  # both paths (complete sweep, sweep stopped at a flip) were exercised


def test_top_orders_by_sensitivity() -> None:
    clf = random_classifier(seed=1)
    x = np.full((9, 1), 0.5, np.float32)
    smap = saliency_map(SearchContext(clf, NumpyKernels(), ThreatModel(), x, int(clf.predict(x[None])[0]), 4096))
    top = smap.top(4)
    assert list(smap.sensitivity[top]) == sorted(smap.sensitivity, reverse=True)[:4]


def test_cli_on_demo_writes_files(tmp_path) -> None:
    out = tmp_path / "sal"
    result = invoke(["saliency", "--n", "2", "--out", out, "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["index"] for r in report["samples"]] == [0, 1]
    assert json.loads((out / "results.json").read_text()) == report
    with np.load(out / "saliency.npz") as f:
        assert f["maps"].shape == (2, 28, 28) and f["maps"].dtype == np.float32
        assert list(f["index"]) == [0, 1]
        maps = f["maps"]
    for r, m in zip(report["samples"], maps):
        assert len(r["top"]) == 10
        first = r["top"][0]
        assert m[first["row"], first["col"]] == pytest.approx(m.max())
        assert first["sensitivity"] == pytest.approx(float(m.max()), rel=1e-6)
    assert (out / "saliency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table(tmp_path) -> None:
    result = invoke(["saliency", "--n", "1", "--values", "grid:3", "--score", "logit", "-q"])
    assert result.exit_code == 0, result.stderr
    assert "single-pixel flip:" in result.stdout and "sensitivity" in result.stdout


def test_memory_plan_bounds_the_chunk_and_the_batch() -> None:
    """At 224x224x3 with 8 corner colours the chunk of perturbed inputs fits half the budget, is
    whole pixels (a multiple of |V|), and the model batch is bounded too; --batch-size wins."""
    from types import SimpleNamespace

    from l0tre_saliency.command import memory_plan

    model = SimpleNamespace(geometry=SimpleNamespace(n_pixels=224 * 224, n_channels=3), batch_size=256)
    threat = ThreatModel()
    plan = memory_plan(model, threat, 1024, None)
    input_bytes = 224 * 224 * 3 * 4
    assert plan["values_per_pixel"] == 8 and plan["chunk"] % 8 == 0
    assert plan["chunk"] * input_bytes <= 512 * 2**20 < (plan["chunk"] + 8) * input_bytes
    assert 1 <= plan["model_batch"] <= plan["chunk"] and plan["model_batch"] * input_bytes * 20 <= 512 * 2**20
    small = memory_plan(model, threat, 16, None)
    assert small["chunk"] == 8 and small["model_batch"] == 1  # never below one pixel's values
    assert memory_plan(model, threat, 1024, 7)["model_batch"] == 7
    mnist = SimpleNamespace(geometry=SimpleNamespace(n_pixels=784, n_channels=1), batch_size=256)
    assert memory_plan(mnist, threat, 1024, None)["chunk"] == 4096  # small inputs keep the engine's chunk


def test_cli_reports_memory_and_rates() -> None:
    result = invoke(["saliency", "--n", "2", "--memory-mb", "64", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["memory"]["budget_mb"] == 64 and report["memory"]["peak_rss_mb"] > 0
    s = report["summary"]
    assert s["evaluations"] == 2 * 784 * 2 and s["evaluations_per_second"] > 0
    assert s["seconds"] >= max(r["seconds"] for r in report["samples"])  # the run, not its last input
    bad = invoke(["saliency", "--n", "1", "--memory-mb", "8"])
    assert bad.exit_code == 2 and "--memory-mb" in bad.stderr
