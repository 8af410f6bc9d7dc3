"""Fuzzing the command line: whatever the options and whatever the model file, l0tre ends with
success or one of its documented errors (exit 0, 2, 3 or 4), never with a traceback.

(a) random option values for ``robustness`` and ``info`` on the embedded demo, kept tiny
(``--n 1 --max-t 1`` unless the fuzzer replaces them with something that is refused);
(b) random bytes, and truncations and byte flips of a valid tiny model, as ``MODEL.onnx``.
Everything runs in-process through CliRunner on a fresh app per example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from helpers import make_cnn, write_npz
from l0tre_cli import create_app
from l0tre_core.host import create_host

CLEAN_EXITS = {0, 2, 3, 4}
FUZZ = settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(create_app(create_host()), [str(a) for a in args])


def assert_clean(result: Any, args: list[Any], allowed: set[int] = CLEAN_EXITS) -> None:
    where = f"l0tre {' '.join(map(str, args))}"
    event(f"exit {result.exit_code}")
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{where}: {result.exception!r}"
    assert result.exit_code in allowed, f"{where}: exit {result.exit_code}\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{where}:\n{result.stderr}"
    assert "Traceback" not in result.stdout, f"{where}:\n{result.stdout}"


# --- (a) option values -------------------------------------------------------------------------------------

NUMBERISH = st.text(alphabet="0123456789-+.,eEinfa x", max_size=8)
WORDISH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz:,[]/ -_0123456789", max_size=10)

# Per option: values that keep a demo run tiny and valid, values that must be refused, and free text.
TEN = ",".join(f"c{i}" for i in range(10))
OPTIONS: dict[str, tuple[list[str], list[str], st.SearchStrategy[str]]] = {
    "--n": (["1", "1", "2"], ["-1", "0", "1000000000000", "x", "1.5"], NUMBERISH),
    "--start": (["0", "7", "499"], ["-1", "500", str(10**20), "x"], NUMBERISH),
    "--range": (["0,1", " 0 , 1 "], ["1,0", "0", "a,b", "0,inf", "-1e308,1e308", "0,1e30", "0.5,0.5", ",", "0,1,2"], NUMBERISH),
    "--mean": (["0", "0.5", "-0.25"], ["0.1,0.2,0.3", "nan", "1e38", "", "-1e30"], NUMBERISH),
    "--std": (["1", "0.3", "2"], ["0", "-1", "1e-40", "inf", "0.2,0.2", "1e-30"], NUMBERISH),
    "--layout": (["nchw"], ["nhwc", "flat", "NCHW", "", "[/x]", "nwhc"], WORDISH),
    "--output": (["logits", "probs"], ["scores", "", "[b]"], WORDISH),
    "--classes": ([TEN], ["a,b", "[bold]", "a,,b", ""], WORDISH),
    "--channels": (["1"], ["0", "3", "-2", "99999999999999999999"], NUMBERISH),
    "--input-name": (["image"], ["nope", "[/x]", ""], WORDISH),
    "--output-name": (["logits"], ["nope", ""], WORDISH),
    "--format": (["table", "json", "json"], ["xml", "", "JSON"], WORDISH),
    "--seed": (["0", "7", "4294967295"], ["-1", "4294967296", "x"], NUMBERISH),
    "--device": (["cpu", "auto"], ["cuda", "tpu", ""], WORDISH),
    "--batch-size": (["7", "64", "1000000000000"], ["-1", "0", "x"], NUMBERISH),
}
ROBUSTNESS_OPTIONS: dict[str, tuple[list[str], list[str], st.SearchStrategy[str]]] = {
    "--max-t": (["1"], ["-5", "0", "1.5", "one", ""], NUMBERISH),
    "--time-limit": (["5", "inf", "1e-300", "0.01"], ["-1", "0", "nan", "-inf", "x"], NUMBERISH),
    "--input-time-limit": (["5", "inf", "1e-300"], ["-1", "0", "nan"], NUMBERISH),
    "--lower": (["auto", "sound", "discrete", "both"], ["none", "", "Sound"], WORDISH),
    # grid:K with K up to a few dozen: a huge K is a known, separate problem (see the report)
    "--values": (["corners", "grid:2", "grid:3", "grid:17"], ["grid:", "grid:1", "grid:x", "grid:-4", "grid:1e3", "Corners", ""], WORDISH.filter(lambda v: not v.startswith("grid:"))),
    "--unit": (["pixel", "feature"], ["", "pixels"], WORDISH),
    "--against": (["prediction", "label"], ["x", ""], WORDISH),
    "--score": (["margin", "logit"], ["x", ""], WORDISH),
    "--upper": (["none", "sensitivity", "random-search"], ["bogus", ""], WORDISH),
}


FLAGS = ("-q", "--resume")


@st.composite
def option_value(draw: Any, spec: tuple[list[str], list[str], st.SearchStrategy[str]], good_share: int) -> str:
    good, bad, free = spec
    roll = draw(st.integers(0, 99))
    if roll < good_share:
        return draw(st.sampled_from(good))
    if roll < good_share + (100 - good_share) // 2:
        return draw(st.sampled_from(bad))
    return draw(free)


@st.composite
def command_line(draw: Any, command: str, tmp: Path) -> list[Any]:
    """Half the examples are sane but for a value or two; the others are mostly nonsense."""
    sane = draw(st.booleans())
    good_share = 95 if sane else 50
    pool = dict(OPTIONS)
    if command == "robustness":
        pool.update(ROBUSTNESS_OPTIONS)
    names = draw(st.lists(st.sampled_from(sorted(pool)), max_size=6, unique=True))
    args: list[Any] = [command]
    odd_paths = {"missing": tmp / "missing.onnx", "folder": tmp, "text": tmp / "notes.txt", "brackets": tmp / "[/m].onnx"}
    if not sane or draw(st.integers(0, 9)) == 0:
        model = draw(st.sampled_from(["demo", *odd_paths]))
        if model != "demo":
            args.append(odd_paths[model])
    # tiny by default: the fuzzer may replace these values, never by bigger ones that are accepted
    if "--n" not in names:
        args.append("--n=1")
    if command == "robustness" and "--max-t" not in names:
        args.append("--max-t=1")
    for name in names:
        args.append(f"{name}={draw(option_value(pool[name], good_share))}")
    if not sane or draw(st.integers(0, 9)) == 0:
        data_paths = {"missing": tmp / "none.npz", "folder": tmp, "text": tmp / "notes.txt", "model": tmp / "notes.onnx"}
        data = draw(st.sampled_from([None, *data_paths]))
        if data is not None:
            args.append(f"--data={data_paths[data]}")
        if draw(st.booleans()):
            args.append(f"--labels={draw(st.sampled_from([tmp / 'notes.txt', tmp / 'none.idx', tmp]))}")
    if command == "robustness":
        out = draw(st.sampled_from([None, "fresh", "fresh", "under-a-file", "a-file"]))
        if out is not None:
            out_paths = {"fresh": tmp / f"out{draw(st.integers(0, 10**9))}", "under-a-file": tmp / "notes.txt" / "o", "a-file": tmp / "notes.txt"}
            args.append(f"--out={out_paths[out]}")
        args += draw(st.lists(st.sampled_from(FLAGS if not sane else ("-q",)), max_size=2, unique=True))
    if draw(st.integers(0, 19)) == 0:
        args.append(draw(WORDISH))  # a stray extra argument
    return args


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "notes.txt").write_text("label,pixels\nnot,numbers\n")
    (tmp / "notes.onnx").write_text("not a model\n")
    return tmp


def check_success(result: Any, args: list[Any]) -> None:
    """A run that succeeded reports consistent bounds."""
    if result.exit_code != 0 or not any(str(a) == "--format=json" for a in args):
        return
    report = json.loads(result.stdout)
    for s in report.get("samples", []):
        assert s["upper"] is None or s["lower"] <= s["upper"], s


@FUZZ
@given(data=st.data())
def test_fuzz_robustness_options(scratch: Path, data: st.DataObject) -> None:
    args = data.draw(command_line("robustness", scratch))
    result = invoke(args)
    assert_clean(result, args)
    check_success(result, args)


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_fuzz_info_options(scratch: Path, data: st.DataObject) -> None:
    args = data.draw(command_line("info", scratch))
    result = invoke(args)
    assert_clean(result, args)
    check_success(result, args)


# --- (b) model bytes ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("tiny")
    model = make_cnn(folder / "cnn.onnx", h=4, w=4, classes=3)
    data = write_npz(folder / "d.npz", np.random.default_rng(0).random((3, 4, 4), dtype=np.float32), np.array([0, 1, 2]))
    return {"bytes": model.read_bytes(), "data": data}


def info_on(path: Path, model_bytes: bytes, data: Path | None) -> None:
    path.write_bytes(model_bytes)
    args: list[Any] = ["info", path] + ([] if data is None else ["--data", data])
    result = invoke(args)
    assert_clean(result, args, {0, 3})
    if result.exit_code == 3:
        assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr


@settings(FUZZ, max_examples=40)
@given(blob=st.one_of(st.binary(max_size=512), st.binary(min_size=1, max_size=16).map(lambda b: b * 64)))
def test_fuzz_random_bytes_as_a_model(tmp_path: Path, blob: bytes) -> None:
    info_on(tmp_path / "MODEL.onnx", blob, None)


@st.composite
def mutation(draw: Any, size: int) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "insert", "delete"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, size - 1))
    if kind == "flip":
        return kind, draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=6))
    return kind, (draw(st.integers(0, size - 1)), draw(st.binary(min_size=1, max_size=8)) if kind == "insert" else draw(st.integers(1, 16)))


def mutate(blob: bytes, change: tuple[str, Any]) -> bytes:
    kind, how = change
    if kind == "truncate":
        return blob[:how]
    b = bytearray(blob)
    if kind == "flip":
        for pos, mask in how:
            b[pos] ^= mask
        return bytes(b)
    pos, what = how
    if kind == "insert":
        return bytes(b[:pos] + what + b[pos:])
    return bytes(b[:pos] + b[pos + what:])


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fuzz_mutated_model(tmp_path: Path, tiny: dict[str, Any], data: st.DataObject) -> None:
    blob = tiny["bytes"]
    change = data.draw(mutation(len(blob)))
    with_data = data.draw(st.booleans())
    info_on(tmp_path / "MODEL.onnx", mutate(blob, change), tiny["data"] if with_data else None)


def test_the_unmutated_model_is_accepted(tmp_path: Path, tiny: dict[str, Any]) -> None:
    """The mutation test starts from a model that works (else every mutation would be refused)."""
    (tmp_path / "MODEL.onnx").write_bytes(tiny["bytes"])
    result = invoke(["info", tmp_path / "MODEL.onnx", "--data", tiny["data"]])
    assert result.exit_code == 0, result.stderr
