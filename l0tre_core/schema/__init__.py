"""One versioned result document for every application.

Every command that writes results (``--out``: ``results.json``; ``--format json``: stdout) writes
the same top level:

- ``schema_version`` (``SCHEMA_VERSION``), ``command`` (the application's name);
- ``versions``: l0tre, NumPy, ONNX, onnxruntime (and CuPy where installed);
- ``model``: the model's ``describe()`` (card, providers, session options); a comparison of several
  models (``design``) has ``models``, a list of those, instead;
- ``threat``: the threat model; ``data``: where the inputs came from;
- ``summary``: the command's aggregate numbers; ``samples``: one object per input, each with its
  ``index`` in the data file;
- the command's own keys beside these (``budget``, ``history``, ``cases``, ``claims``, ...).

``result.schema.json`` (shipped beside this module) describes the common part;
``validate_result(doc)`` checks a document against it with a small validator for exactly the
part of JSON Schema that file uses (no third-party dependency).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any, Iterable

from l0tre_core.errors import L0treError

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("result.schema.json")
RESULT_NAME = "results.json"

_DISTRIBUTIONS = ("onnx", "onnxruntime", "onnxruntime-gpu", "cupy-cuda13x", "cupy-cuda12x")


class ResultSchemaError(L0treError):
    """A result document does not follow the result schema (an internal error; exit code 5)."""

    exit_code = 5

    def __init__(self, errors: list[str]) -> None:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        super().__init__(f"the result does not follow the result schema: {shown}", hint="please report this")
        self.errors = errors


def software_versions() -> dict[str, str]:
    """The versions of l0tre and of the libraries a result depends on."""
    import numpy as np

    import l0tre_core

    out = {"l0tre": l0tre_core.__version__, "numpy": np.__version__}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def result_document(
    command: str,
    *,
    threat: dict[str, Any],
    summary: dict[str, Any],
    samples: Iterable[dict[str, Any]],
    model: dict[str, Any] | None = None,
    models: list[dict[str, Any]] | None = None,
    versions: dict[str, str] | None = None,
    **extras: Any,
) -> dict[str, Any]:
    """The result document of ``command``: the common keys first, then ``extras`` (the command's
    own top-level keys, e.g. ``data``, ``budget``, ``cases``), then ``samples``.

    Give ``model`` (a ``describe()``) or, for a comparison, ``models`` (a list of them)."""
    if (model is None) == (models is None):
        raise TypeError("result_document takes either model or models")
    clash = {"schema_version", "command", "versions", "model", "models", "threat", "summary", "samples"} & set(extras)
    if clash:
        raise TypeError(f"result_document: {', '.join(sorted(clash))} are common keys, not extras")
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "versions": dict(versions) if versions is not None else software_versions(),
    }
    if model is not None:
        doc["model"] = model
    else:
        doc["models"] = list(models or [])
    doc["threat"] = threat
    doc.update(extras)
    doc["summary"] = summary
    doc["samples"] = list(samples)
    return doc


def plain_json(doc: Any) -> Any:
    """``doc`` as plain JSON values (NumPy scalars and arrays converted, as the files hold them)."""
    from l0tre_core.results import json_default

    return json.loads(json.dumps(doc, default=json_default))


def checked_result(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as plain JSON, validated against the result schema (``ResultSchemaError`` if not)."""
    plain = plain_json(doc)
    validate_result(plain)
    return plain


def write_result_json(folder: Path, doc: dict[str, Any]) -> Path:
    """Validate ``doc`` and write it to ``folder/results.json`` (atomically); returns the path."""
    from l0tre_core.results import atomic_write

    plain = checked_result(doc)
    path = Path(folder) / RESULT_NAME
    atomic_write(path, lambda fh: json.dump(plain, fh, indent=2))
    return path


# --- the validator --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The result schema (``result.schema.json``), parsed."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def validate_result(doc: Any, schema: dict[str, Any] | None = None) -> None:
    """Raise ``ResultSchemaError`` listing every place where ``doc`` breaks the result schema."""
    errors = schema_errors(doc, schema)
    if errors:
        raise ResultSchemaError(errors)


def schema_errors(doc: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Where ``doc`` (plain JSON values) breaks ``schema`` (default: the result schema), one
    message per problem, each starting with its JSON path (``$.samples[0].index``)."""
    root = load_schema() if schema is None else schema
    errors: list[str] = []
    _check(doc, root, root, "$", errors)
    return errors


# The keywords the validator understands; a schema using any other is refused rather than half-checked.
ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
KEYWORDS = frozenset({
    "type", "const", "enum", "required", "properties", "additionalProperties", "items", "minItems", "maxItems",
    "minimum", "minLength", "oneOf", "$ref",
})

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and math.isfinite(v) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


class UnsupportedSchema(ValueError):
    """The schema uses JSON Schema the small validator does not implement."""


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise UnsupportedSchema(f"only local references (#/...) are supported, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise UnsupportedSchema(f"reference {ref!r} does not resolve")
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) in (int, float) and type(b) in (int, float) and a == b or (type(a) is type(b) and a == b)


def _check(value: Any, schema: Any, root: dict[str, Any], path: str, errors: list[str]) -> None:
    if schema is True:
        return
    if schema is False:
        errors.append(f"{path}: no value is allowed here")
        return
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"a schema must be an object or a boolean, got {schema!r}")
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise UnsupportedSchema(f"unsupported JSON Schema keyword(s): {', '.join(sorted(unknown))}")
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path, errors)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        for name in names:
            if name not in _TYPES:
                raise UnsupportedSchema(f"unknown type {name!r}")
        if not any(_TYPES[name](value) for name in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {_describe(value)}")
            return  # the other keywords assume the type
    if "const" in schema and not _same(value, schema["const"]):
        errors.append(f"{path}: must be {json.dumps(schema['const'])}, got {_describe(value)}")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        errors.append(f"{path}: must be one of {json.dumps(schema['enum'])}, got {_describe(value)}")
    if isinstance(value, str) and "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: shorter than {schema['minLength']} character(s)")
    if _TYPES["number"](value) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} item(s)")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], root, f"{path}[{i}]", errors)
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}", errors)
            elif "additionalProperties" in schema:
                _check(item, schema["additionalProperties"], root, f"{path}.{key}", errors)
    if "oneOf" in schema:
        passing = sum(not _sub_errors(value, option, root, path) for option in schema["oneOf"])
        if passing != 1:
            errors.append(f"{path}: must match exactly one of {len(schema['oneOf'])} alternatives "
                          f"({_alternatives(schema['oneOf'])}), matches {passing}")


def _sub_errors(value: Any, schema: Any, root: dict[str, Any], path: str) -> list[str]:
    found: list[str] = []
    _check(value, schema, root, path, found)
    return found


def _alternatives(options: list[Any]) -> str:
    parts = []
    for option in options:
        if isinstance(option, dict) and set(option) == {"required"}:
            parts.append("keys " + " and ".join(repr(k) for k in option["required"]))
        else:
            parts.append("a schema")
    return " / ".join(parts)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value) if isinstance(value, (str, int, float)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
