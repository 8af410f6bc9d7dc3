"""Faults from outside: signals, kill -9, a full disk, unwritable folders, bad budgets, hostile files.

A long run must survive all of them without a traceback and without losing finished work:
Ctrl-C and SIGTERM write the bounds reached so far and exit 130; after kill -9, ``--resume``
ends exactly where an uninterrupted run ends; a failed write leaves the previous result files as
they were; nothing in a data file or a checkpoint is ever executed.

The subprocess tests run a small MLP on 10x10 grey images whose inputs are robust to 3 pixels, so
the full t = 3 enumeration (C(100, 3) x 8 evaluations per input) keeps a run busy for a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

import l0tre_core
from helpers import _value, assert_one_line_error, invoke, l0tre_cmd, make_model_with, ort_outputs, write_npz
from l0tre_core.api import evaluate
from l0tre_core.checkpoint import NAME as CHECKPOINT
from l0tre_core.data import Dataset, load_data
from l0tre_core.driver import Budget
from l0tre_core.errors import CardError, CheckpointError, DataError, UsageError
from l0tre_core.model import load_model
from l0tre_core.results import OutputError
from numpy_models import random_classifier

HW = 10
N = 5
INTERRUPTED = 130


# --- a model that keeps a run busy for a few seconds ------------------------------------------------------


def make_robust_mlp(path: Path, hw: int = HW, margin: float = 2.0, hidden: int = 16, seed: int = 0) -> Path:
    """Flatten + ReLU MLP on ``[N, 1, hw, hw]``; class 0 leads by ``margin``, so it takes a few pixels."""
    rng = np.random.default_rng(seed)
    d = hw * hw
    w1 = rng.normal(0, 1 / np.sqrt(d), (d, hidden))
    w1 -= w1.mean(axis=0, keepdims=True)
    inits = {
        "w1": (2 * w1).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": rng.normal(0, 1 / np.sqrt(hidden), (hidden, 3)).astype(np.float32),
        "b2": np.array([margin, 0, 0], np.float32),
    }
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
    ]
    return make_model_with(path, nodes, [_value("x", ("N", 1, hw, hw))], [_value("logits", ("N", 3))], inits)


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, data and arguments of a run of a few seconds, and its uninterrupted outcome."""
    folder = tmp_path_factory.mktemp("slow")
    model = make_robust_mlp(folder / "robust.onnx")
    x = np.random.default_rng(1).random((N, HW, HW), dtype=np.float32)
    data = write_npz(folder / "robust.npz", x)
    args = ["robustness", model, "--data", data, "--max-t", "3", "--lower", "discrete", "--n", str(N), "--device", "cpu", "-q"]
    ref = folder / "ref"
    started = time.monotonic()
    proc = run(args + ["--out", ref])
    assert proc.returncode == 0, proc.stderr
    seconds = time.monotonic() - started
    want = outcome(ref, x)
    assert sum(s["upper"] is not None and s["lower"] < s["upper"] for s in want["samples"]) >= 2, "the inputs are too easy"
    lines = len(read_lines(ref / CHECKPOINT))
    return {"model": model, "x": x, "args": args, "want": want, "lines": lines, "seconds": seconds}


# --- child processes ---------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("L0TRE_DISABLE_PLUGIN_AUTOLOAD", None)
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    return env


def start(args: list[Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*l0tre_cmd(), *[str(a) for a in args]],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(args: list[Any], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*l0tre_cmd(), *[str(a) for a in args]], env=child_env(), capture_output=True, text=True, timeout=timeout
    )


def read_lines(path: Path) -> list[bytes]:
    """The whole lines of a checkpoint (a torn last line does not count)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]


def wait_for_lines(proc: subprocess.Popen[str], path: Path, count: int, timeout: float = 60) -> int:
    """Wait until ``path`` holds ``count`` whole lines; returns how many it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = len(read_lines(path))
        if have >= count:
            return have
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before its checkpoint had {count} lines:\n{err}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no {count} checkpoint lines within {timeout}s")


def outcome(folder: Path, x: np.ndarray) -> dict[str, Any]:
    """What must not depend on interruptions: per input lower, upper, guarantee and the witness
    (its image and its size, recounted from witnesses.npz against the clean input)."""
    results = json.loads((folder / "results.json").read_text())
    with np.load(folder / "witnesses.npz", allow_pickle=False) as w:
        witnesses = {int(i): adv for i, adv in zip(w["index"], w["x_adv"])}
    samples = []
    for s in results["samples"]:
        adv = witnesses.get(s["index"])
        size = None if adv is None else int(np.count_nonzero(adv != x[s["index"]]))
        samples.append({
            "index": s["index"], "reference": s["reference"], "lower": s["lower"], "upper": s["upper"],
            "guarantee": s["guarantee"], "witness_size": size,
            "witness": None if adv is None else adv.tobytes(),
        })
    return {"complete": results["complete"], "samples": samples}


def assert_sane(folder: Path, model: Path, x: np.ndarray) -> dict[str, Any]:
    """Partial results: lower <= upper, and every upper bound a witness of that size that the model
    itself (run here, outside l0tre) classifies differently from the reference."""
    got = outcome(folder, x)
    for s in got["samples"]:
        assert s["lower"] >= 0
        if s["upper"] is None:
            assert s["witness"] is None
            continue
        assert s["lower"] <= s["upper"], s
        assert s["witness_size"] == s["upper"], s
        adv = np.frombuffer(s["witness"], np.float32).reshape(1, 1, HW, HW)
        assert int(np.argmax(ort_outputs(model, adv)[0])) != s["reference"], s
    return got


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_partial_results_then_resume_completes(tmp_path: Path, slow_run: dict, signum: int) -> None:
    out = tmp_path / "out"
    proc = start(slow_run["args"] + ["--out", out])
    wait_for_lines(proc, out / CHECKPOINT, 2)  # the header and the first finished step
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == INTERRUPTED, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    assert stdout == ""
    assert_one_line_error(stderr, contains=["interrupted", "checkpoint", "--resume", str(out)])
    partial = assert_sane(out, slow_run["model"], slow_run["x"])
    assert partial["complete"] is False
    assert json.loads((out / "results.json").read_text())["complete"] is False
    assert partial["samples"] != slow_run["want"]["samples"]  # it really stopped early

    proc = run(slow_run["args"] + ["--out", out, "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert outcome(out, slow_run["x"]) == slow_run["want"]


# --- kill -9 ---------------------------------------------------------------------------------------------------


def test_kill_9_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path: Path, slow_run: dict) -> None:
    """Three runs, each killed at a random moment (a random number of checkpoint lines, then a random
    pause that lands anywhere in the next step, mid-write included); two resumes are killed again."""
    rng = random.Random(20240611)
    total = slow_run["lines"]
    for trial in range(3):
        out = tmp_path / f"run{trial}"
        proc = start(slow_run["args"] + ["--out", out])
        wait_for_lines(proc, out / CHECKPOINT, rng.randint(2, total - 3))
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert not (out / "results.json").exists()
        if trial != 1:  # the resumed run is killed too
            have = len(read_lines(out / CHECKPOINT))
            proc = start(slow_run["args"] + ["--out", out, "--resume"])
            if have + 1 < total:
                wait_for_lines(proc, out / CHECKPOINT, have + 1)
                time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        proc = run(slow_run["args"] + ["--out", out, "--resume"])
        assert proc.returncode == 0, f"trial {trial}: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        got = outcome(out, slow_run["x"])
        assert got == slow_run["want"], f"trial {trial}"
        assert got["complete"] is True


# --- in-process kills the subprocess tests cannot aim at ------------------------------------------------


def small_setup(n: int = 4) -> tuple[Any, Dataset]:
    clf = random_classifier(5, h=3, w=3)
    x = np.random.default_rng(5).random((n, 9, 1), dtype=np.float32)
    return clf, Dataset(x, None, np.arange(n), "random", (9, 1), "hwc")


def samples_of(result: Any) -> list[dict]:
    keep = ("index", "reference", "lower", "upper", "guarantee", "witness")
    return [{k: s.to_json()[k] for k in keep} for s in result.samples]


@pytest.mark.parametrize("content", [b"", b'{"format": "l0tre-checkpoint/1", "key": "ab'], ids=["empty", "torn-header"])
def test_kill_before_the_header_was_whole_resumes_from_the_start(tmp_path: Path, content: bytes) -> None:
    """A run killed between creating its checkpoint and finishing the first line saved nothing:
    --resume starts afresh (and writes a good header), instead of refusing or appending to a torn line."""
    clf, data = small_setup()
    want = samples_of(evaluate(clf, data, budget=Budget(max_t=2), lower="discrete"))
    (tmp_path / CHECKPOINT).write_bytes(content)
    got = evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", out=tmp_path, resume=True)
    assert samples_of(got) == want
    # the checkpoint it wrote is whole: resuming once more changes nothing
    again = evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", out=tmp_path, resume=True)
    assert samples_of(again) == want


def test_ctrl_c_before_the_first_step_is_still_an_interrupt(tmp_path: Path) -> None:
    clf, data = small_setup()

    def interrupted(batch: Any) -> Any:
        raise KeyboardInterrupt

    clf.runtime.run = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", out=tmp_path)


# --- a full disk ------------------------------------------------------------------------------------------------


RESULT_FILES = ("results.json", "samples.csv", "witnesses.npz", "convergence.png")


def no_space_when(monkeypatch: pytest.MonkeyPatch, fail: Any) -> list[str]:
    """Make os.fsync raise ENOSPC when ``fail(path, calls_so_far)`` says so; returns the paths synced."""
    real = os.fsync
    synced: list[str] = []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if fail(path, synced):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        synced.append(path)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RESULT_FILES}


@pytest.mark.parametrize("failing", range(4), ids=[f"while-writing-{n}" for n in RESULT_FILES])
def test_disk_full_while_writing_results_keeps_the_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int) -> None:
    clf, data = small_setup()
    evaluate(clf, data, budget=Budget(max_t=1), lower="discrete", out=tmp_path)
    before = snapshot(tmp_path)

    def fail(path: str, synced: list[str]) -> bool:
        return Path(path).name.startswith(f".{RESULT_FILES[failing]}.")

    no_space_when(monkeypatch, fail)
    with pytest.raises(OutputError, match="No space left on device") as info:
        evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", out=tmp_path)
    assert info.value.exit_code == 3
    assert RESULT_FILES[failing] in str(info.value)
    assert snapshot(tmp_path) == before  # all four: none was replaced, not even those written before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*RESULT_FILES, CHECKPOINT])  # no temporaries
    monkeypatch.undo()
    # the checkpoint of the failed run is whole: resuming it writes the results
    resumed = evaluate(clf, data, budget=Budget(max_t=2), lower="discrete", out=tmp_path, resume=True)
    assert samples_of(resumed) == samples_of(evaluate(clf, data, budget=Budget(max_t=2), lower="discrete"))
    assert snapshot(tmp_path) != before


def test_disk_full_while_writing_the_checkpoint_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clf, data = small_setup()
    budget = Budget(max_t=3)
    want = samples_of(evaluate(clf, data, budget=budget, lower="discrete"))

    def fail(path: str, synced: list[str]) -> bool:
        return path.endswith(CHECKPOINT) and len([p for p in synced if p.endswith(CHECKPOINT)]) >= 4

    no_space_when(monkeypatch, fail)
    with pytest.raises(OutputError, match="`resume`"):
        evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "results.json").exists()
    got = evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, resume=True)
    assert samples_of(got) == want


def test_disk_full_through_the_cli_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["robustness", "--n", "1", "--max-t", "1", "--lower", "discrete", "--out", tmp_path, "-q"]
    assert invoke(args).exit_code == 0
    before = snapshot(tmp_path)
    no_space_when(monkeypatch, lambda path, synced: Path(path).name.startswith(".samples.csv."))
    result = invoke([*args, "--seed", "1", "--overwrite"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 3, result.stderr
    assert_one_line_error(result.stderr, contains=["samples.csv", "No space left on device"])
    assert snapshot(tmp_path) == before
    no_space_when(monkeypatch, lambda path, synced: path.endswith(CHECKPOINT))
    result = invoke([*args, "--seed", "2", "--overwrite"])
    assert result.exit_code == 3, result.stderr
    assert_one_line_error(result.stderr, contains=["checkpoint", "No space left on device"])


# --- unwritable --out, bad budgets ------------------------------------------------------------------------------


def refused(args: list, code: int, contains: str | list[str] = ()) -> str:
    result = invoke(args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    return assert_one_line_error(result.stderr, contains=contains)


def test_out_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("a file, not a folder\n")
    base = ["robustness", "--n", "1", "--max-t", "1"]
    refused([*base, "--out", plain / "run"], 3, ["--out", "plain.txt"])
    refused([*base, "--out", plain], 3, ["--out", "plain.txt"])
    refused([*base, "--out", plain / "run", "--resume"], 3, "plain.txt")
    assert plain.read_text() == "a file, not a folder\n"
    clf, data = small_setup()
    with pytest.raises(DataError, match="plain.txt"):
        evaluate(clf, data, budget=Budget(max_t=1), out=plain / "run")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--time-limit", "0"), ("--time-limit", "-1"), ("--time-limit", "nan"),
        ("--input-time-limit", "0"), ("--input-time-limit", "-0.5"),
        ("--max-t", "0"), ("--max-t", "-2"),
        ("--batch-size", "0"), ("--batch-size", "-8"),
        ("--seed", "-1"), ("--seed", str(2**32)),
    ],
)
def test_bad_budget_is_a_usage_error(tmp_path: Path, flag: str, value: str) -> None:
    refused(["robustness", "--n", "1", "--max-t", "1", f"{flag}={value}", "--out", tmp_path / "o"], 2, flag)


def test_resume_without_out_is_a_usage_error() -> None:
    refused(["robustness", "--n", "1", "--max-t", "1", "--resume"], 2, ["--resume", "--out"])


def test_budgets_and_seed_are_checked_by_the_engine_too() -> None:
    for kwargs in ({"max_t": 0}, {"time_limit": 0.0}, {"time_limit": float("nan")}, {"input_time_limit": -1.0}):
        with pytest.raises(UsageError) as refused:
            Budget(**kwargs)
        (name,) = kwargs
        assert refused.value.field == name and f"`{name}`" in str(refused.value)  # the CLI shows the flag
    clf, data = small_setup(1)
    for seed in (-1, 2**32, 2**64):
        with pytest.raises(UsageError, match="`seed`") as refused:
            evaluate(clf, data, budget=Budget(max_t=1), seed=seed)
        assert refused.value.field == "seed"


def test_normalisation_that_overflows_float32_is_refused() -> None:
    """A std of 1e-40 sends the model inf/NaN: no bound computed on that may be reported."""
    refused(["robustness", "--n", "1", "--max-t", "1", "--mean", "0", "--std", "1e-40"], 3, ["--std", "float32"])
    refused(["robustness", "--n", "1", "--max-t", "1", "--mean", "1e38", "--std", "1e-3"], 3, "float32")
    model = load_model(None, card={"std": "1e-40"})
    data = load_data(None, model.geometry, model.card.range, n=1)
    with pytest.raises(CardError, match="float32"):
        evaluate(model, data, budget=Budget(max_t=1))


def test_markup_in_paths_and_values_prints_as_is(tmp_path: Path) -> None:
    """Messages quote what the user typed: '[/x]' is text, not rich markup (it used to crash)."""
    refused(["info", tmp_path / "[/x].onnx"], 3, "[/x].onnx")
    refused(["info", "--layout", "[/bold]"], 2, "'[/bold]'")
    refused(["info", "--data", tmp_path / "[red]d.npz"], 3, "[red]d.npz")
    out = tmp_path / "[/x]"
    result = invoke(["robustness", "--n", "1", "--max-t", "1", "--lower", "discrete", "--out", out])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert f"results written to {out}" in result.stderr


# User text that looks like rich markup, and value grids too large to build.


def test_info_on_a_model_whose_path_looks_like_markup(tmp_path: Path) -> None:
    model = make_robust_mlp(tmp_path / "[/m].onnx", hw=2)
    result = invoke(["info", model])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0


def test_plugin_name_that_looks_like_markup_is_one_line() -> None:
    proc = run(["-p", "[/x]", "info"])
    assert proc.returncode == 3, proc.stderr
    assert_one_line_error(proc.stderr, contains="[/x]")


def test_huge_value_grid_is_a_usage_error() -> None:
    refused(["robustness", "--n", "1", "--max-t", "1", "--values", "grid:100000000000"], 2, "--values")


def test_a_device_file_is_not_read_as_a_model() -> None:
    """/dev/zero would be read until memory runs out."""
    refused(["info", "/dev/zero"], 3, "not a regular file")


# --- nothing from a data file or a checkpoint is executed --------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def pickled_array(marker: Path, n: int = 5) -> np.ndarray:
    arr = np.empty(n, dtype=object)
    for i in range(n):
        arr[i] = Payload(marker)
    return arr


def test_pickled_object_arrays_are_refused_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    evil = tmp_path / "evil.npz"
    np.savez(evil, x=pickled_array(marker), y=np.zeros(5, np.int64))
    evil_y = tmp_path / "evil_y.npz"
    np.savez(evil_y, x=np.zeros((5, 28, 28), np.float32), y=pickled_array(marker))
    evil_labels = tmp_path / "labels.npy"
    np.save(evil_labels, pickled_array(marker), allow_pickle=True)
    # The payload works: numpy with allow_pickle=True would run it.
    with np.load(evil, allow_pickle=True) as archive:
        archive["x"]
    assert marker.exists()
    marker.unlink()

    refused(["info", "--data", evil], 3, "evil.npz")
    refused(["robustness", "--data", evil, "--n", "1", "--max-t", "1"], 3, "evil.npz")
    refused(["info", "--data", evil_y], 3, "evil_y.npz")
    refused(["info", "--data", evil_y, "--labels", evil_labels], 3, "labels.npy")
    model = load_model(None)
    for path, labels in ((evil, None), (evil_y, None), (evil_y, evil_labels)):
        with pytest.raises(DataError):
            load_data(path, model.geometry, model.card.range, labels=labels, n_classes=10)
    assert not marker.exists()


def good_checkpoint(folder: Path) -> tuple[Any, Dataset, Budget, list[dict]]:
    """A finished run with a checkpoint in ``folder`` (its header is what a forger would copy), and
    what an honest run gives."""
    clf, data = small_setup()
    budget = Budget(max_t=2)
    want = samples_of(evaluate(clf, data, budget=budget, lower="discrete"))
    evaluate(clf, data, budget=budget, lower="discrete", out=folder)
    return clf, data, budget, want


def crafted_states(marker: Path, good: dict) -> list[tuple[str, Any]]:
    code = f"__import__('os').system('touch {marker}')"
    w = good["witness"]
    return [
        ("code-as-index", {**good, "index": code}),
        ("code-as-upper", {**good, "upper": code}),
        ("code-as-label", {**good, "label": code}),
        ("upper-as-list", {**good, "upper": [1, 2]}),
        ("float-upper", {**good, "upper": 1.5}),
        ("bool-lower", {**good, "lower_discrete": True}),
        ("negative-lower", {**good, "lower_sound": -4}),
        ("string-finished", {**good, "finished": "false"}),
        ("nan-seconds", {**good, "seconds": float("nan")}),
        ("lower-above-upper", {**good, "lower_discrete": 50}),
        ("state-is-a-list", [good]),
        ("state-is-null", None),
        ("extra-key", "__extra__"),
        ("units-as-strings", {**good, "witness": {"units": [str(u) for u in w["units"]], "values": w["values"]}}),
        ("unit-outside-the-input", {**good, "witness": {"units": [10**6] * len(w["units"]), "values": w["values"]}}),
        ("huge-unit", {**good, "witness": {"units": [2**70] * len(w["units"]), "values": w["values"]}}),
        ("values-out-of-range", {**good, "witness": {"units": w["units"], "values": [[7.5]] * len(w["units"])}}),
        ("values-wrong-shape", {**good, "witness": {"units": w["units"], "values": [[0.0, 1.0]] * len(w["units"])}}),
        ("witness-smaller-than-upper", {**good, "upper": good["upper"] + 1}),
        ("witness-as-code", {**good, "witness": code}),
        ("reference-not-a-class", {**good, "reference": 99}),
    ]


def test_crafted_checkpoint_lines_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    ref = tmp_path / "ref"
    clf, data, budget, want = good_checkpoint(ref)
    lines = (ref / CHECKPOINT).read_bytes().split(b"\n")
    header = lines[0]
    good = next(json.loads(line)["state"] for line in lines[1:] if line and json.loads(line)["state"]["witness"])
    for name, state in crafted_states(marker, good):
        out = tmp_path / name
        out.mkdir()
        record = {"state": good, "extra": "x"} if state == "__extra__" else {"state": state}
        (out / CHECKPOINT).write_bytes(header + b"\n" + json.dumps(record).encode() + b"\n")
        with pytest.raises(CheckpointError, match="corrupt at line 2"):
            evaluate(clf, data, budget=budget, lower="discrete", out=out, resume=True)
        assert not marker.exists(), name
        assert not (out / "results.json").exists(), name


@pytest.mark.parametrize(
    "raw",
    [
        b'{"state": {"index": 1' + b"1" * 5000 + b"}}",  # an integer Python refuses to parse
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion
        b'{"state": \xff\xfe}',  # not UTF-8
        b'{"state": {"index": NaN, "seconds": Infinity}}',
        b'{"__class__": "os.system", "state": "touch EXECUTED"}',
    ],
    ids=["5000-digits", "deep-nesting", "not-utf8", "nan-literals", "class-hint"],
)
def test_raw_checkpoint_lines_that_are_not_states_are_refused(tmp_path: Path, raw: bytes) -> None:
    clf, data, budget, want = good_checkpoint(tmp_path)
    lines = (tmp_path / CHECKPOINT).read_bytes().split(b"\n")
    lines.insert(2, raw)  # in the middle: not a torn last line
    (tmp_path / CHECKPOINT).write_bytes(b"\n".join(lines))
    with pytest.raises(CheckpointError, match="corrupt at line 3"):
        evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, resume=True)


def test_crafted_checkpoint_is_refused_through_the_cli(tmp_path: Path) -> None:
    args = ["robustness", "--n", "2", "--max-t", "1", "--lower", "discrete", "--out", tmp_path, "-q"]
    assert invoke(args).exit_code == 0
    path = tmp_path / CHECKPOINT
    lines = path.read_bytes().split(b"\n")
    state = json.loads(lines[1])["state"]
    state["upper"] = "__import__('os').system('false')"
    lines[1] = json.dumps({"state": state}).encode()
    path.write_bytes(b"\n".join(lines))
    refused([*args, "--resume"], 3, ["checkpoint", "corrupt at line 2"])


@pytest.mark.parametrize("forgery", ["not-adversarial", "wrong-reference", "wrong-label"])
def test_well_typed_but_false_checkpoint_claims_are_not_reported(tmp_path: Path, forgery: str) -> None:
    """A witness read back is re-run through the model before its upper bound is reported; a record
    whose reference is not the model's prediction is searched again."""
    clf, data, budget, want = good_checkpoint(tmp_path)
    path = tmp_path / CHECKPOINT
    lines = [line for line in path.read_bytes().split(b"\n") if line]
    forged = []
    for line in lines[1:]:
        state = json.loads(line)["state"]
        if forgery == "not-adversarial" and state["witness"]:
            pos = state["index"]
            units = state["witness"]["units"][:1]
            state["witness"] = {"units": units, "values": [[float(data.x[pos, units[0], 0]) + 0.0]]}
            # a change that is no change: the recount differs, and the label does not flip
            state["upper"], state["lower_sound"], state["lower_discrete"] = 1, 1, 1
        elif forgery == "wrong-reference":
            state["reference"] = (state["reference"] + 1) % clf.n_classes
            state["witness"] = {"units": [], "values": []}
            state["upper"], state["lower_sound"], state["lower_discrete"] = 0, 0, 0
        elif forgery == "wrong-label":
            state["label"] = 2
        state["finished"] = True
        state["level"] = budget.max_t
        forged.append(json.dumps({"state": state}).encode())
    path.write_bytes(b"\n".join([lines[0], *forged]) + b"\n")
    got = evaluate(clf, data, budget=budget, lower="discrete", out=tmp_path, resume=True)
    assert samples_of(got) == want


# --- what a result records -------------------------------------------------------------------------------------


def test_results_record_versions_and_providers(tmp_path: Path) -> None:
    import onnxruntime

    result = invoke(["robustness", "--n", "1", "--max-t", "1", "--device", "cpu", "--out", tmp_path, "-q", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(result.stdout) | {"seconds": saved["seconds"]}
    assert saved["versions"]["l0tre"] == l0tre_core.__version__
    assert saved["versions"]["onnxruntime"] == onnxruntime.__version__
    assert saved["versions"]["numpy"] == np.__version__
    assert saved["model"]["providers"] == ["CPUExecutionProvider"]
    assert saved["complete"] is True


def test_an_earlier_checkpoint_is_never_overwritten_by_accident(tmp_path: Path) -> None:
    args = ["robustness", "--n", "1", "--max-t", "1", "--lower", "discrete", "--out", tmp_path, "-q"]
    assert invoke(args).exit_code == 0
    before = (tmp_path / CHECKPOINT).read_bytes()
    refused(args, 2, ["--resume", "--overwrite"])
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert invoke([*args, "--overwrite"]).exit_code == 0
