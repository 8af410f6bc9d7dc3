"""``--lower auto`` refutes before it proves: an input that one unit flips is settled by the cheap
enumeration at t = 1, and the certifier is never asked about it (issue #11 point 3, issue #10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import invoke, labelled_by_model, make_mlp, write_npz
from l0tre_core.certifier import SoundCertifier


def test_inputs_one_unit_flips_are_not_certified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_mlp(tmp_path / "m.onnx", d_in=16, hidden=8, classes=3, seed=3)
    x = np.random.default_rng(0).uniform(0, 1, (12, 16)).astype(np.float32)
    data = write_npz(tmp_path / "x.npz", x, labelled_by_model(model, x))
    seen: list[np.ndarray] = []  # the inputs the certifier was asked about
    real = SoundCertifier.certify

    def counting(self: SoundCertifier, ctx, t, deadline):  # type: ignore[no-untyped-def]
        seen.append(ctx.x_units.copy())
        return real(self, ctx, t, deadline)

    monkeypatch.setattr(SoundCertifier, "certify", counting)
    res = invoke(["robustness", model, "--data", data, "--max-t", "1", "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    samples = json.loads(res.stdout)["samples"]
    flipped = [s for s in samples if s["upper"] == 1]
    robust = [s for s in samples if s["upper"] != 1]
    assert flipped and robust, "the fixture needs both kinds of input"
    certified = {u.tobytes() for u in seen}
    for s in flipped:  # settled by the enumeration: the certifier never saw them
        assert x[s["index"]].reshape(-1, 1).tobytes() not in certified
    assert len(seen) == len(robust)
