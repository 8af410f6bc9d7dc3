"""l0tre: how many pixels must change to flip a classifier's decision, with proven bounds.

This module is the façade: everything a plugin or a backend may use is importable from here
(``from l0tre_core import evaluate, Witness, UsageError, hookimpl``), and built-in plugins import
nothing else from the core. Names load on first use, so ``import l0tre_core`` stays cheap.

- plugin machinery: ``hookimpl``, ``create_host``;
- contracts (``l0tre_core.contracts``): ``DataFormat``, ``RawData``, ``InferenceBackend``,
  ``BackendOptions``, ``Runtime``, ``ArrayKernels``, ``LowerBoundMethod``, ``Certifier``,
  ``Certificate``, ``UpperBoundMethod``;
- the engine: ``load_model``, ``load_data``, ``evaluate``, ``Budget``, ``ThreatModel``,
  ``Classifier``, ``Dataset``, ``pick_kernels``, ``CHUNK`` (perturbed inputs per model call group);
- one input: ``SearchContext`` (the per-input context: sweep, union, tighten, verify),
  ``Sensitivity``, ``Witness``, ``SampleState``, ``flips``, ``score``;
- results and events: ``RunResult``, ``BoundUpdate``, ``atomic_write``, ``json_default``,
  ``CHECKPOINT_NAME``;
- executors (``l0tre_core.executors``): ``make_executor`` (local or ray), ``InputTask`` and
  ``InputWorker`` (the per-input work an executor maps over the inputs), ``ClassifierRecipe`` (the
  model, rebuilt in a worker), ``WorkersLost``;
- the result document every application writes (``l0tre_core.schema``): ``result_document``
  (build one), ``checked_result`` (as plain JSON, validated), ``write_result_json`` (validated, to
  ``results.json``), ``validate_result`` / ``schema_errors`` (check one against
  ``schema/result.schema.json``), ``software_versions``, ``RESULT_SCHEMA_VERSION``,
  ``ResultSchemaError``;
- figures: ``pyplot`` (matplotlib.pyplot drawing off-screen), ``png`` (a figure as PNG bytes);
- errors: ``L0treError`` and its subclasses (each with its exit code; ``field`` names the
  parameter an error is about).
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("l0tre")
"""Decorate your plugin's hook functions with this marker."""

_FACADE = {
    "create_host": "l0tre_core.host",
    "ArrayKernels": "l0tre_core.contracts",
    "BackendOptions": "l0tre_core.contracts",
    "Certificate": "l0tre_core.contracts",
    "Certifier": "l0tre_core.contracts",
    "DataFormat": "l0tre_core.contracts",
    "InferenceBackend": "l0tre_core.contracts",
    "LowerBoundMethod": "l0tre_core.contracts",
    "RawData": "l0tre_core.contracts",
    "Runtime": "l0tre_core.contracts",
    "UpperBoundMethod": "l0tre_core.contracts",
    "load_model": "l0tre_core.model",
    "Classifier": "l0tre_core.model",
    "load_data": "l0tre_core.data",
    "Dataset": "l0tre_core.data",
    "evaluate": "l0tre_core.api",
    "pick_kernels": "l0tre_core.api",
    "Budget": "l0tre_core.driver",
    "CHUNK": "l0tre_core.driver",
    "ThreatModel": "l0tre_core.threat",
    "SearchContext": "l0tre_core.sweep",
    "Sensitivity": "l0tre_core.sweep",
    "Witness": "l0tre_core.witness",
    "SampleState": "l0tre_core.witness",
    "flips": "l0tre_core.witness",
    "score": "l0tre_core.witness",
    "RunResult": "l0tre_core.results",
    "atomic_write": "l0tre_core.results",
    "json_default": "l0tre_core.results",
    "result_document": "l0tre_core.schema",
    "validate_result": "l0tre_core.schema",
    "schema_errors": "l0tre_core.schema",
    "checked_result": "l0tre_core.schema",
    "write_result_json": "l0tre_core.schema",
    "software_versions": "l0tre_core.schema",
    "ResultSchemaError": "l0tre_core.schema",
    "BoundUpdate": "l0tre_core.events",
    "make_executor": "l0tre_core.executors",
    "WorkersLost": "l0tre_core.executors",
    "InputTask": "l0tre_core.executors",
    "InputWorker": "l0tre_core.executors",
    "ClassifierRecipe": "l0tre_core.executors.recipe",
    "pyplot": "l0tre_core.figures",
    "png": "l0tre_core.figures",
    "L0treError": "l0tre_core.errors",
    "UsageError": "l0tre_core.errors",
    "ModelError": "l0tre_core.errors",
    "CardError": "l0tre_core.errors",
    "DataError": "l0tre_core.errors",
    "PluginError": "l0tre_core.errors",
    "EnvironmentProblem": "l0tre_core.errors",
    "CheckpointError": "l0tre_core.errors",
    "CertificateContradiction": "l0tre_core.errors",
    "Interrupted": "l0tre_core.errors",
}
_RENAMED = {
    "CHECKPOINT_NAME": ("l0tre_core.checkpoint", "NAME"),
    "RESULT_SCHEMA_VERSION": ("l0tre_core.schema", "SCHEMA_VERSION"),
}

__all__ = ["__version__", "hookimpl", *sorted(_FACADE), *sorted(_RENAMED)]


def __getattr__(name: str) -> Any:
    if name in _FACADE:
        value = getattr(importlib.import_module(_FACADE[name]), name)
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'l0tre_core' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
