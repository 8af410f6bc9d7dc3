"""One result schema for every application: what ``--format json`` prints and what ``--out``
writes to ``results.json`` follow ``l0tre_core/schema/result.schema.json``; the small validator
checks exactly what that file says."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import invoke, write_npz
from l0tre_core import RESULT_SCHEMA_VERSION, ResultSchemaError, result_document, schema_errors, validate_result
from l0tre_core.schema import SCHEMA_FILE, UnsupportedSchema, load_schema

COMMON = ["--n", "2", "--format", "json"]
RUNS = {
    "robustness": ["robustness", *COMMON, "--max-t", "1", "--lower", "discrete", "--upper", "none"],
    "attack": ["attack", *COMMON, "--budget", "50"],
    "saliency": ["saliency", *COMMON, "--top", "3"],
    "testgen": ["testgen", *COMMON, "--max-t", "1", "--per-input", "1", "--no-coverage"],
}


def check(doc: dict[str, Any], command: str, indexes: list[int]) -> None:
    assert schema_errors(doc) == []
    assert doc["schema_version"] == RESULT_SCHEMA_VERSION == 2
    assert doc["command"] == command
    assert [s["index"] for s in doc["samples"]] == indexes
    assert doc["summary"]["inputs"] == len(indexes)
    assert doc["versions"]["l0tre"] and doc["versions"]["numpy"] == np.__version__


@pytest.mark.parametrize("command", sorted(RUNS))
def test_every_application_prints_and_writes_one_schema(tmp_path: Path, command: str) -> None:
    out = tmp_path / command
    result = invoke([*RUNS[command], "--out", out])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    saved = json.loads((out / "results.json").read_text())
    for doc in (printed, saved):
        check(doc, command, [0, 1])
        assert doc["model"]["providers"] and "card" in doc["model"] and "session_options" in doc["model"]
        assert doc["threat"]["range"] == [0.0, 1.0]
    assert saved == printed
    # --format json changes stdout only: progress still goes to stderr without -q
    assert "2/2 inputs" in result.stderr


def test_design_prints_and_writes_one_schema(tmp_path: Path) -> None:
    from test_design import linear_model

    fragile = linear_model(tmp_path / "fragile.onnx", np.eye(16)[0] * 10.0, -5.0)
    robust = linear_model(tmp_path / "robust.onnx", np.ones(16), -8.0)
    data = write_npz(tmp_path / "data.npz", np.full((2, 16), 0.1, np.float32), np.zeros(2, np.int64))
    out = tmp_path / "design"
    result = invoke(["design", fragile, robust, "--data", data, "--layout", "flat", "--max-t", "1",
                     "--format", "json", "--out", out])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    saved = json.loads((out / "results.json").read_text())
    for doc in (printed, saved):
        check(doc, "design", [0, 1])
        assert "model" not in doc and [m["name"] for m in doc["models"]] == ["fragile", "robust"]
        assert all(m["providers"] and "card" in m for m in doc["models"])
        assert doc["claims"] and [r["name"] for r in doc["summary"]["ranking"]] == ["robust", "fragile"]
        assert set(doc["samples"][0]["models"]) == {"fragile", "robust"}
    assert saved == printed
    assert "2/2 inputs" in result.stderr


def test_quiet_json_writes_nothing_to_stderr(tmp_path: Path) -> None:
    result = invoke([*RUNS["saliency"], "-q"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    check(json.loads(result.stdout), "saliency", [0, 1])


# --- the schema file and the validator ------------------------------------------------------------------------


def minimal(**changes: Any) -> dict[str, Any]:
    doc = result_document(
        "example",
        versions={"l0tre": "0.1.0", "numpy": "2.0"},
        model={"path": None, "card": {}, "providers": ["CPUExecutionProvider"], "session_options": {}},
        threat={"unit": "pixel", "range": [0, 1], "values": "corners", "against": "prediction", "score": "margin"},
        summary={"inputs": 1},
        samples=[{"index": 0, "label": None, "reference": 3}],
    )
    doc.update(changes)
    return doc


def test_the_schema_ships_in_the_package() -> None:
    text = resources.files("l0tre_core").joinpath("schema/result.schema.json").read_text(encoding="utf-8")
    assert json.loads(text) == load_schema()
    assert SCHEMA_FILE.name == "result.schema.json"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"schema/*.json"' in pyproject
    schema = load_schema()
    assert set(schema["required"]) == {"schema_version", "command", "versions", "threat", "summary", "samples"}
    assert schema["properties"]["samples"]["items"]["required"] == ["index"]


def test_a_minimal_document_is_valid_and_a_comparison_takes_models() -> None:
    validate_result(minimal())
    doc = minimal()
    doc["models"] = [doc.pop("model")]
    validate_result(doc)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("command"), "$: missing required key 'command'"),
    (lambda d: d.update(schema_version=1), "$.schema_version: must be 2, got 1"),
    (lambda d: d.update(command=""), "$.command: shorter than 1"),
    (lambda d: d.update(samples={"index": 0}), "$.samples: expected array, got an object"),
    (lambda d: d["samples"].append({"label": 1}), "$.samples[1]: missing required key 'index'"),
    (lambda d: d["samples"].append({"index": True}), "$.samples[1].index: expected integer, got true"),
    (lambda d: d["samples"].append({"index": -1}), "$.samples[1].index: -1 is below the minimum 0"),
    (lambda d: d["samples"].append({"index": 1.5}), "$.samples[1].index: expected integer, got 1.5"),
    (lambda d: d["versions"].update(onnx=1), "$.versions.onnx: expected string, got 1"),
    (lambda d: d["model"].pop("providers"), "$.model: missing required key 'providers'"),
    (lambda d: d["threat"].update(range=[0]), "$.threat.range: fewer than 2 item(s)"),
    (lambda d: d.pop("model"), "matches 0"),
    (lambda d: d.update(models=[d["model"]]), "matches 2"),
    (lambda d: d.update(models=[]), "$.models: fewer than 1 item(s)"),
    (lambda d: d["summary"].pop("inputs"), "$.summary: missing required key 'inputs'"),
])
def test_the_validator_names_each_problem(change: Any, message: str) -> None:
    doc = minimal()
    change(doc)
    errors = schema_errors(doc)
    assert any(message in e for e in errors), errors
    with pytest.raises(ResultSchemaError) as info:
        validate_result(doc)
    assert info.value.exit_code == 5 and info.value.errors == errors and errors[0] in str(info.value)


def test_integral_floats_count_as_integers_and_extras_are_free() -> None:
    doc = minimal(cases=[{"anything": 1}], history=[[0.1, 1.0, None]])
    doc["samples"][0]["index"] = 2.0
    assert schema_errors(doc) == []


def test_the_validator_refuses_keywords_it_does_not_implement() -> None:
    with pytest.raises(UnsupportedSchema, match="pattern"):
        schema_errors("x", {"type": "string", "pattern": "^x$"})
    with pytest.raises(UnsupportedSchema, match="local references"):
        schema_errors(1, {"$ref": "https://example.org/s.json"})
    schema = copy.deepcopy(load_schema())
    schema["$defs"]["model"]["properties"]["path"]["format"] = "uri"
    with pytest.raises(UnsupportedSchema, match="format"):
        schema_errors(minimal(), schema)


def test_enum_and_boolean_schemas() -> None:
    schema = {"type": "object", "properties": {"a": {"enum": [1, "x"]}, "b": False}, "additionalProperties": True}
    assert schema_errors({"a": 1.0, "c": 3}, schema) == []
    assert schema_errors({"a": True}, schema) == ['$.a: must be one of [1, "x"], got true']
    assert schema_errors({"b": 0}, schema) == ["$.b: no value is allowed here"]


def test_result_document_keeps_common_keys_common() -> None:
    with pytest.raises(TypeError):
        result_document("x", threat={}, summary={}, samples=[], model={}, models=[])
    with pytest.raises(TypeError):
        result_document("x", threat={}, summary={}, samples=[], model={}, schema_version=1)
