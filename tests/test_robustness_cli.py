"""`l0tre robustness` end to end: demo, real models it has never seen, every layout, witnesses
checked independently with onnxruntime."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from helpers import DEMO_DATA, MODELS, invoke, make_cnn, ort_outputs, write_npz
from l0tre_core import hookimpl
from l0tre_core.api import evaluate
from l0tre_core.data import load_data
from l0tre_core.driver import Budget
from l0tre_core.model import load_model
from l0tre_core.host import create_host


def write_idx(folder, x: np.ndarray, y: np.ndarray) -> None:
    """MNIST-style IDX files, gzip, with the labels beside the images as MNIST names them."""
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 0x803, len(x), 28, 28) + x.astype(np.uint8).tobytes())
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes())


def check_witnesses(out, model_path, x_clean: np.ndarray, to_model) -> dict:
    results = json.loads((out / "results.json").read_text())
    w = np.load(out / "witnesses.npz", allow_pickle=False)
    by_index = {s["index"]: s for s in results["samples"]}
    assert len(w["index"]) == sum(s["upper"] is not None for s in results["samples"])
    for i, adv in zip(w["index"], w["x_adv"]):
        s = by_index[int(i)]
        clean = x_clean[int(i)]
        assert adv.shape == clean.shape
        changed_pixels = np.any((adv != clean).reshape(adv.shape[0] * adv.shape[1], -1), axis=1).sum() if adv.ndim == 3 else (adv != clean).sum()
        assert int(changed_pixels) == s["upper"]
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        out_adv = ort_outputs(model_path, to_model(adv)[None])
        out_clean = ort_outputs(model_path, to_model(clean)[None])
        assert int(np.argmax(out_clean)) == s["reference"]
        assert int(np.argmax(out_adv)) != s["reference"]
        assert s["lower"] <= s["upper"]
    return results


def test_unseen_fixed_batch_model_on_idx_files_with_labels_beside(tmp_path) -> None:
    demo = np.load(DEMO_DATA)
    write_idx(tmp_path, demo["x"][:20], demo["y"][:20])
    out = tmp_path / "run"
    model = MODELS / "cnn_maxpool_b1.onnx"
    r = invoke(["robustness", model, "--data", tmp_path / "t10k-images-idx3-ubyte.gz", "--n", "8",
                "--max-t", "1", "--lower", "discrete", "--out", out, "-q"])
    assert r.exit_code == 0, r.stderr
    x = demo["x"][:20].astype(np.float32) / 255.0
    results = check_witnesses(out, model, x, lambda img: img[None])
    assert results["model"]["batching"] == "rewritten"
    assert [s["label"] for s in results["samples"]] == demo["y"][:8].tolist()
    for name in ("samples.csv", "convergence.png", "checkpoint.jsonl"):
        assert (out / name).stat().st_size > 0


def test_flat_fixed_batch_mlp_and_json_output(tmp_path) -> None:
    demo = np.load(DEMO_DATA)
    out = tmp_path / "run"
    model = MODELS / "mlp_b1.onnx"
    r = invoke(["robustness", model, "--data", DEMO_DATA, "--n", "5", "--max-t", "1", "--out", out, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["schema_version"] == 2 and printed["command"] == "robustness" and len(printed["samples"]) == 5
    assert printed["summary"]["lower"] <= printed["summary"]["upper"]
    check_witnesses(out, model, demo["x"].astype(np.float32) / 255.0, lambda img: img.reshape(784))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_rgb_models_with_normalisation_outside_the_graph(tmp_path, layout: str) -> None:
    model = make_cnn(tmp_path / "m.onnx", layout=layout, c=3, h=4, w=4, seed=3)
    rng = np.random.default_rng(0)
    x = rng.random((4, 4, 4, 3), dtype=np.float32)  # H, W, C as images are stored
    data = write_npz(tmp_path / "d.npz", (x * 255).astype(np.uint8))
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    out = tmp_path / "run"
    r = invoke(["robustness", model, "--data", data, "--max-t", "2", "--lower", "discrete", "--out", out, "-q",
                "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3"])
    assert r.exit_code == 0, r.stderr

    def to_model(img):  # data space H,W,C -> the graph's input
        z = (img - mean) / std
        return z.transpose(2, 0, 1) if layout == "nchw" else z

    check_witnesses(out, model, (x * 255).astype(np.uint8).astype(np.float32) / 255.0, to_model)


def test_probabilities_and_feature_unit_and_grid_values(tmp_path) -> None:
    model = make_cnn(tmp_path / "p.onnx", layout="nhwc", c=1, h=3, w=3, softmax=True, seed=5)
    x = np.random.default_rng(1).random((3, 3, 3), dtype=np.float32)
    data = write_npz(tmp_path / "d.npz", x)
    for extra in (["--unit", "feature"], ["--values", "grid:3"], ["--score", "logit"]):
        r = invoke(["robustness", model, "--data", data, "--max-t", "2", "--lower", "discrete", "--format", "json", *extra])
        assert r.exit_code == 0, (extra, r.stderr)
        res = json.loads(r.stdout)
        assert res["model"]["card"]["output"] == "probs"
        for s in res["samples"]:
            assert s["upper"] is None or s["lower"] <= s["upper"]


def test_event_hook_receives_every_update() -> None:
    seen = []

    class Listener:
        @hookimpl
        def l0tre_bounds_updated(self, update):
            seen.append(update)

    host = create_host(extra=[Listener()])
    model = load_model(None, host=host)
    data = load_data(None, model.geometry, model.card.range, host=host, n=3)
    result = evaluate(model, data, budget=Budget(max_t=1), lower="discrete", host=host)
    assert {u.index for u in seen} == {0, 1, 2}
    finals = {u.index: u for u in seen if u.finished}
    assert [finals[s.index].upper for s in result.samples] == [s.upper for s in result.samples]
    assert seen[-1].done == 3 and seen[-1].global_lower == result.global_lower


def test_a_lower_bound_method_that_raises_is_a_warning_not_a_traceback(tmp_path, monkeypatch) -> None:
    """A bug in the certifier on one input costs that input its certificate, not the run: the
    other inputs keep theirs, the run's notes and stderr name the failure in one line."""
    from l0tre_core import certifier

    real = certifier.SoundCertifier.certify
    calls: list[int] = []

    def broken(self, ctx, t, deadline):
        calls.append(t)
        if len(calls) == 1:
            raise RuntimeError("boom in the certifier")
        return real(self, ctx, t, deadline)

    monkeypatch.setattr(certifier.SoundCertifier, "certify", broken)
    out = tmp_path / "run"
    args = ["robustness", MODELS / "mlp_b1.onnx", "--data", DEMO_DATA, "--n", "4", "--max-t", "1", "--lower", "sound",
            "--upper", "none"]
    r = invoke(args + ["--out", out])
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    warned = [line for line in r.stderr.splitlines() if "lower-bound method failed" in line]
    assert len(warned) == 1 and "failed on 1 input(s)" in warned[0] and "RuntimeError: boom" in warned[0], r.stderr
    results = json.loads((out / "results.json").read_text())
    assert any("RuntimeError: boom in the certifier" in n for n in results["model"]["notes"])
    # the same run without the failure: only the failed input's certificate is missing
    monkeypatch.setattr(certifier.SoundCertifier, "certify", real)
    r = invoke(args + ["--out", tmp_path / "clean"])
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    got = [(s["lower"], s["guarantee"]) for s in results["samples"]]
    want = [(s["lower"], s["guarantee"]) for s in clean["samples"]]
    assert sum(a != b for a, b in zip(got, want)) == 1 and want.count((2, "sound")) >= 2, (got, want)
