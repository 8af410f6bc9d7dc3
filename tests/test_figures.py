"""The figures: what can be checked without eyes (history from time 0 across a resume, one colour
scale for saliency maps, valid PNGs of a reasonable size)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from l0tre_core.api import evaluate
from l0tre_core.data import Dataset
from l0tre_core.driver import Budget
from l0tre_core.results import convergence_png, convergence_points
from numpy_models import random_classifier

PNG = b"\x89PNG\r\n\x1a\n"


class Killed(BaseException):
    """Stands in for SIGKILL."""


def valid_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    assert 5_000 < len(data) < 3_000_000
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 300 <= w <= 4000 and 200 <= h <= 6000
    return w, h


def setup(n: int = 5):
    clf = random_classifier(5, h=3, w=3)
    x = np.random.default_rng(5).random((n, 9, 1), dtype=np.float32)
    return clf, Dataset(x, None, np.arange(n), "random", (9, 1), "hwc")


def test_resumed_history_starts_at_zero_and_keeps_the_steps_before_the_resume(tmp_path) -> None:
    clf, data = setup()
    budget = Budget(max_t=3)
    seen = []

    def killer(update, state):
        if update.recorded:
            seen.append((update.global_lower, update.global_upper))
            if len(seen) == 4:
                raise Killed

    with pytest.raises(Killed):
        evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, listeners=[killer])
    saved = [json.loads(line)["at"] for line in (tmp_path / "checkpoint.jsonl").read_text().splitlines()[1:]]
    assert len(saved) == 4
    result = evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, resume=True)
    history = result.history
    assert [tuple(h[1:]) for h in history[:4]] == seen  # the steps before the resume, bounds as they were
    assert [h[0] for h in history[:4]] == pytest.approx([a[0] for a in saved], abs=1e-3)
    times = [h[0] for h in history]
    assert times == sorted(times) and len(history) > 4
    assert times[4] >= times[3]  # the resumed steps continue the clock
    points = convergence_points(result)
    assert points[0][0] == 0.0 and points[0][1] == 1.0  # from time 0, where every input starts at lower 1
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["history"]) == len(history)
    valid_png((tmp_path / "convergence.png").read_bytes())


def test_history_is_replayed_from_a_checkpoint_without_time_points(tmp_path) -> None:
    clf, data = setup()
    budget = Budget(max_t=2)
    count = 0

    def killer(update, state):
        nonlocal count
        count += update.recorded
        if count == 3:
            raise Killed

    with pytest.raises(Killed):
        evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, listeners=[killer])
    path = tmp_path / "checkpoint.jsonl"
    lines = path.read_text().splitlines()
    old = [lines[0]] + [json.dumps({"state": json.loads(line)["state"]}) for line in lines[1:]]  # an older l0tre's
    path.write_text("\n".join(old) + "\n")
    result = evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, resume=True)
    times = [h[0] for h in result.history]
    assert len(result.history) >= 3 and times == sorted(times)
    assert all(0 < h[1] for h in result.history)


def test_convergence_png_without_history_is_still_a_figure() -> None:
    clf, data = setup(2)
    result = evaluate(clf, data, budget=Budget(max_t=1), lower="discrete")
    valid_png(convergence_png(result))
    result.history = []
    assert convergence_points(result)[0] == (0.0, 1.0, None)
    valid_png(convergence_png(result))


def test_saliency_maps_share_one_colour_scale_by_default() -> None:
    from l0tre_saliency.figure import colour_ranges, saliency_png

    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8)) * np.array([1.0, 5.0, 0.2])[:, None, None]
    shared = colour_ranges(maps)
    assert len(set(shared)) == 1 and shared[0] == (0.0, pytest.approx(maps.max()))
    per = colour_ranges(maps, "per-panel")
    assert len(set(per)) == 3
    with pytest.raises(ValueError):
        colour_ranges(maps, "jet")
    images = rng.random((3, 8, 8, 1))
    for scale in ("shared", "per-panel"):
        valid_png(saliency_png(images, maps, ["a", "b", "c"], (0.0, 1.0), scale=scale))


def test_saliency_figure_uses_one_colour_bar_and_no_rainbow(monkeypatch) -> None:
    from l0tre_core import figures
    from l0tre_saliency import figure

    captured = []
    monkeypatch.setattr(figure, "png", lambda fig: captured.append(fig) or b"")
    rng = np.random.default_rng(1)
    figure.saliency_png(rng.random((4, 6, 6, 1)), rng.random((4, 6, 6)), list("abcd"), (0.0, 1.0))
    fig = captured[0]
    images = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name != "gray"]
    assert len(images) == 4 and {im.get_clim() for im in images} == {images[0].get_clim()}
    assert {im.get_cmap().name for im in images} == {"magma"}
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "worst value in V" in bars[0].get_ylabel()
    figures.pyplot().close(fig)


def test_design_and_adversarial_pngs_are_valid() -> None:
    from l0tre_design.compare import ModelBounds
    from l0tre_design.figure import design_png

    models = [ModelBounds("a", 2.0, 8.0, "sound"), ModelBounds("b", 1.5, None, "discrete"), ModelBounds("c", 9.0, 12.0, "sound")]
    valid_png(design_png(models, inputs=5))
    valid_png(design_png(models[:1]))
