"""``l0tre design``: the comparison claims only what the bounds prove; a much more robust model
ranks first and is proven so; the CLI writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from helpers import _value, invoke, make_model_with, write_npz
from l0tre_design.compare import ModelBounds, claims, compare, global_guarantee, rank


def mb(name: str, lower: float, upper: float | None, guarantee: str = "sound") -> ModelBounds:
    return ModelBounds(name, lower, upper, guarantee)


# --- the comparison, on hand-made numbers -------------------------------------------------------------


def test_disjoint_intervals_give_a_claim_either_way_round() -> None:
    a, b = mb("A", 3.0, 5.0), mb("B", 1.0, 2.5)
    for v in (compare(a, b), compare(b, a)):
        assert v.winner == "A"
        assert "A is provably more robust than B" in v.text and "3.000 > global upper bound 2.500" in v.text


@pytest.mark.parametrize(
    "a, b",
    [
        (mb("A", 2.0, 5.0), mb("B", 1.0, 3.0)),  # overlapping
        (mb("A", 3.0, 4.0), mb("B", 1.0, 3.0)),  # touching: equal ends prove nothing
        (mb("A", 3.0, 4.0), mb("B", 1.0, None)),  # B has no finite upper bound
        (mb("A", 1.0, None), mb("B", 3.0, 4.0)),  # A has none: B cannot be proven above it
        (mb("A", 2.0, 2.0), mb("B", 2.0, 2.0)),  # identical exact values
    ],
)
def test_overlapping_intervals_give_no_claim(a: ModelBounds, b: ModelBounds) -> None:
    for v in (compare(a, b), compare(b, a)):
        assert v.winner is None
        assert "overlap, no claim" in v.text and "provably" not in v.text


def test_discrete_lower_bound_limits_the_claim() -> None:
    v = compare(mb("A", 3.0, 5.0, "discrete"), mb("B", 1.0, 2.0))
    assert v.winner == "A" and "for pixel values in V" in v.text
    assert "pixel values in V" not in compare(mb("A", 3.0, 5.0), mb("B", 1.0, 2.0, "discrete")).text


def test_global_guarantee_is_the_weakest_part() -> None:
    assert global_guarantee(["sound", "sound"]) == "sound"
    assert global_guarantee(["sound", "none"]) == "sound"  # L = 1 holds for every input
    assert global_guarantee(["sound", "discrete"]) == "discrete"
    assert global_guarantee(["none", "none"]) == "none"


def test_rank_and_claims() -> None:
    ranked = rank([mb("low", 1.0, 1.5), mb("mid", 2.0, 6.0), mb("top", 2.0, None), mb("high", 3.0, 4.0)])
    assert [m.name for m in ranked] == ["high", "top", "mid", "low"]
    verdicts = {(v.first, v.second): v.winner for v in claims(ranked)}
    assert verdicts == {
        ("high", "top"): None, ("high", "mid"): None, ("high", "low"): "high",
        ("top", "mid"): None, ("top", "low"): "top", ("mid", "low"): "mid",
    }


# --- end to end, on two tiny models ----------------------------------------------------------------------


def linear_model(path, w1: np.ndarray, b1: float) -> object:
    """Two classes on 16 pixels (a flat 4x4 image): logits = [0, w1 . x + b1]."""
    w = np.zeros((16, 2), np.float32)
    w[:, 1] = w1
    inits = {"w": w, "b": np.array([0.0, b1], np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"])]
    return make_model_with(path, nodes, [_value("x", ("N", 16))], [_value("logits", ("N", 2))], inits, name="lin")


@pytest.fixture
def two_models(tmp_path):
    # fragile: class 1 as soon as pixel 0 passes 0.5, so one pixel flips any input of class 0
    fragile = linear_model(tmp_path / "fragile.onnx", np.eye(16)[0] * 10.0, -5.0)
    # robust: class 1 once the pixels sum past 8: from all-c, k pixels set to 1 flip it when
    # k (1 - c) > 8 - 16 c, so d* = 8, 8, 9 for c = 0.1, 0.05, 0 (no ties at the boundary)
    robust = linear_model(tmp_path / "robust.onnx", np.ones(16), -8.0)
    x = np.repeat(np.array([[0.1], [0.05], [0.0]], np.float32), 16, axis=1)
    data = write_npz(tmp_path / "data.npz", x, np.zeros(3, np.int64))
    return fragile, robust, data


def test_the_more_robust_model_ranks_first_and_is_proven(tmp_path, two_models) -> None:
    fragile, robust, data = two_models
    out = tmp_path / "design"
    args = ["design", fragile, robust, "--data", data, "--layout", "flat", "--max-t", "1", "--out", out, "-q"]
    result = invoke([*args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    ranking = report["summary"]["ranking"]
    by_name = {m["name"]: m for m in ranking}
    assert [m["name"] for m in ranking] == ["robust", "fragile"]
    assert [m["name"] for m in report["models"]] == ["fragile", "robust"]  # command-line order
    assert by_name["fragile"]["lower"] == by_name["fragile"]["upper"] == 1.0
    assert by_name["robust"]["lower"] >= 2.0 and by_name["robust"]["upper"] == pytest.approx(25 / 3)
    assert by_name["robust"]["accuracy"] == by_name["fragile"]["accuracy"] == 1.0
    [claim] = report["claims"]
    assert claim["winner"] == "robust" and "robust is provably more robust than fragile" in claim["text"]
    assert json.loads((out / "results.json").read_text())["claims"] == report["claims"]
    assert [s["models"]["fragile"]["upper"] for s in report["samples"]] == [1, 1, 1]
    assert (out / "design.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = invoke(args)
    assert table.exit_code == 0, table.stderr
    assert "robust is provably more robust than fragile" in table.stdout


def test_same_model_twice_overlaps(two_models) -> None:
    _, robust, data = two_models
    result = invoke(["design", robust, robust, "--data", data, "--layout", "flat", "--max-t", "1", "-q"])
    assert result.exit_code == 0, result.stderr
    assert "robust#1" in result.stdout and "robust#2" in result.stdout
    assert "overlap, no claim" in result.stdout and "provably" not in result.stdout


def test_one_model_is_a_usage_error(two_models) -> None:
    _, robust, data = two_models
    result = invoke(["design", robust, "--data", data, "--layout", "flat"])
    assert result.exit_code == 2
    assert "at least two" in result.stderr


def test_overlapping_intervals_name_what_could_decide_them() -> None:
    from l0tre_design.compare import ModelBounds, certified_share, compare, deciding_budget

    a = ModelBounds("a", 2.0, 3.0, "sound", (2, 2), (3, 3), 1)
    b = ModelBounds("b", 1.5, 2.0, "sound", (1, 2), (2, 2), 1)
    v = compare(a, b)
    assert v.winner is None and "a could be shown more robust with --max-t 2" in v.text
    # exact on both: no budget separates equal intervals
    c = ModelBounds("c", 2.0, 2.0, "sound", (2, 2), (2, 2), 1)
    d = ModelBounds("d", 2.0, 2.0, "sound", (2, 2), (2, 2), 1)
    assert "cannot separate" in deciding_budget(c, d)
    # no per-input bounds: no estimate
    assert deciding_budget(ModelBounds("e", 1, 2, "sound"), ModelBounds("f", 1, 2, "sound")) == ""
    assert certified_share(b, 2) == [0.5, 0.0]


def test_longer_certificate_time_is_named_when_it_would_decide() -> None:
    """An input whose certificate stopped short (lower 1 at max_t 1, no witness at 1) is what
    decides: finished, the level already searched clears the other's upper bound."""
    from l0tre_design.compare import ModelBounds, compare, lower_if_finished, per_input_tally, unfinished

    a = ModelBounds("a", 1.5, 5.0, "sound", (1, 2), (5, 5), 1)  # input 0: level 1 not finished
    b = ModelBounds("b", 1.0, 1.75, "sound", (1, 1), (2, 1.5), 1)
    assert unfinished(a) == 1 and lower_if_finished(a) == 2.0
    v = compare(a, b)
    assert v.winner is None and "a could be shown more robust with a longer certificate time" in v.text
    assert "1 of its inputs stopped below t = 2" in v.text
    assert per_input_tally(a, b) == (1, 0, 1)  # input 1: lower 2 > b's witness 1.5
    assert "a is proven more robust on 1 of 2, b on 0, neither on 1" in v.text


def test_tally_says_when_more_inputs_would_not_help() -> None:
    from l0tre_design.compare import ModelBounds, deciding_budget

    a = ModelBounds("a", 2.0, 4.0, "sound", (3, 1), (4, 1), 2)  # strong on input 0, exact 1 on input 1
    b = ModelBounds("b", 2.0, 4.0, "sound", (1, 3), (1, 4), 2)  # the reverse
    text = deciding_budget(a, b)
    assert "a is proven more robust on 1 of 2, b on 1" in text and "more inputs would not decide" in text


def test_equal_means_rank_by_the_share_proven_at_the_highest_t() -> None:
    from l0tre_design.compare import ModelBounds, rank

    # same mean lower bound 2.0: "deep" proves t = 2 on one input, "flat" proves t = 1 on both
    deep = ModelBounds("deep", 2.0, 6.0, "sound", (3, 1), (6, 6), 2)
    flat = ModelBounds("flat", 2.0, 9.0, "sound", (2, 2), (9, 9), 2)
    assert [m.name for m in rank([flat, deep])] == ["deep", "flat"]  # 50% at t = 2 beats 0%, despite the upper bound
