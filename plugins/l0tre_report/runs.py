"""A result folder as the report reads it: its validated ``results.json`` and the files beside it.

Every problem with a folder the user named is a ``UsageError`` (one line, exit code 2): a report
of a folder that is not a result folder has nothing true to say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l0tre_core import RESULT_SCHEMA_VERSION, UsageError, schema_errors

RESULT_NAME = "results.json"


@dataclass
class RunFolder:
    """One application's result folder."""

    path: Path
    doc: dict[str, Any]
    label: str  # a short name for the comparison (the folder's name, made unique)
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why

    @property
    def command(self) -> str:
        return str(self.doc.get("command", "?"))

    def arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of ``name`` (``witnesses.npz``, ...) beside ``results.json``, or None."""
        p = self.path / name
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            self.notes.append(f"{name} could not be read ({type(exc).__name__}: {exc}); its images are left out")
            return None


def read_run(path: Path) -> dict[str, Any]:
    """The parsed, schema-checked ``results.json`` of ``path``; a ``UsageError`` naming the problem."""
    if not path.exists():
        raise UsageError(f"result folder not found: {path}")
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder (give the folder an application wrote with --out)")
    file = path / RESULT_NAME
    if not file.is_file():
        raise UsageError(f"{path} holds no {RESULT_NAME}: not a result folder (write one with --out)")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{file} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{file} does not hold a result document (a JSON object)")
    version = doc.get("schema_version")
    if version != RESULT_SCHEMA_VERSION:
        raise UsageError(f"{file} has schema_version {version!r}; this report reads version {RESULT_SCHEMA_VERSION}")
    errors = schema_errors(doc)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"{file} does not follow the result schema: {errors[0]}{more}")
    return doc


def read_runs(paths: list[Path]) -> list[RunFolder]:
    """Every folder read and checked before any HTML is written; labels made unique."""
    if not paths:
        raise UsageError("give at least one result folder (l0tre report RUN_DIR...)")
    docs = [(p, read_run(p)) for p in paths]
    names = [p.resolve().name or str(p) for p, _ in docs]
    labels = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names, 1)]
    return [RunFolder(p, d, lab) for (p, d), lab in zip(docs, labels)]
