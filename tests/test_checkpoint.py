"""Kill-and-resume: a run stopped at any step and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from l0tre_core.api import evaluate
from l0tre_core.data import Dataset
from l0tre_core.driver import Budget
from l0tre_core.errors import CheckpointError
from numpy_models import random_classifier


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, except what finally blocks do."""


def setup(seed: int = 5, n: int = 5):
    clf = random_classifier(seed, h=3, w=3)
    rng = np.random.default_rng(seed)
    x = rng.random((n, 9, 1), dtype=np.float32)
    return clf, Dataset(x, None, np.arange(n), "random", (9, 1), "hwc")


def outcome(result) -> list[dict]:
    keep = ("index", "reference", "lower", "upper", "guarantee", "lower_sound", "lower_discrete", "level", "finished")
    return [{k: s.to_json()[k] for k in keep} | {"witness": s.to_json()["witness"]} for s in result.samples]


def test_resume_after_kills_at_many_points_matches_an_uninterrupted_run(tmp_path) -> None:
    clf, data = setup()
    budget = Budget(max_t=3)
    want = outcome(evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path / "ref"))
    events = []
    evaluate(clf, data, budget=budget, lower="discrete", listeners=[lambda u, s: events.append(u)])
    rng = random.Random(0)
    kill_points = [rng.randrange(1, len(events) + 1) for _ in range(20)]
    for trial, kill_after in enumerate(kill_points):
        out = tmp_path / f"run{trial}"
        out.mkdir()
        count = 0

        def killer(update, state):
            nonlocal count
            count += 1
            if count >= kill_after:
                raise Killed

        with pytest.raises(Killed):
            evaluate(clf, data, budget=budget, lower="discrete", out=out, listeners=[killer])
        assert not (out / "results.json").exists()
        if trial % 3 == 1:  # a write torn by the kill
            with open(out / "checkpoint.jsonl", "ab") as fh:
                fh.write(b'{"state": {"index": 3, "lo')
        # a second kill during the resumed run, sometimes
        if trial % 4 == 2:
            count, kill_after = 0, 1
            try:  # raises unless the first run had already finished every input
                evaluate(clf, data, budget=budget, lower="discrete", out=out, resume=True, listeners=[killer])
            except Killed:
                pass
        got = outcome(evaluate(clf, data, budget=budget, lower="discrete", out=out, resume=True))
        assert got == want, f"kill after {kill_after} events"
        saved = json.loads((out / "results.json").read_text())
        assert [s["upper"] for s in saved["samples"]] == [s["upper"] for s in want]


def test_foreign_checkpoint_is_refused(tmp_path) -> None:
    clf, data = setup()
    evaluate(clf, data, budget=Budget(max_t=1), lower="discrete", out=tmp_path)
    with pytest.raises(CheckpointError, match="another run"):
        evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", out=tmp_path, resume=True)


def test_corrupt_checkpoint_is_refused(tmp_path) -> None:
    clf, data = setup()
    evaluate(clf, data, budget=Budget(max_t=1), lower="discrete", out=tmp_path)
    path = tmp_path / "checkpoint.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage in the middle"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(CheckpointError, match="corrupt"):
        evaluate(clf, data, budget=Budget(max_t=1), lower="discrete", out=tmp_path, resume=True)
    path.write_bytes(b'{"something": "else"}\n')
    with pytest.raises(CheckpointError, match="not an l0tre checkpoint"):
        evaluate(clf, data, budget=Budget(max_t=1), lower="discrete", out=tmp_path, resume=True)
