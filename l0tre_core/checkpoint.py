"""Checkpoints: one JSON line per finished step, so a killed run resumes where it stopped.

The first line identifies the run (model digest, data selection, threat model, budgets, seed);
resuming with anything else is refused rather than mixed in. A torn last line (the process was
killed mid-write) is ignored; a checkpoint killed before its first line was whole holds no work
and starts afresh; any other damage is an error. Every record is checked field by field (types,
ranges, witness shape) before it is used: a checkpoint is data, never code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from l0tre_core.witness import SampleState
from l0tre_core.errors import CheckpointError
from l0tre_core.results import OutputError

NAME = "checkpoint.jsonl"
FORMAT = "l0tre-checkpoint/1"


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Checkpoint:
    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.path = folder / NAME
        self.identity = identity
        self.key = fingerprint(identity)
        self._fh: Any = None
        self._fresh = False  # the checkpoint on disk holds no whole header: start it anew

    def load(
        self,
        channels: int,
        *,
        units: int | None = None,
        classes: int | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> dict[int, SampleState]:
        """The latest state of every input in an existing checkpoint of this same run.

        ``units``, ``classes`` and ``value_range`` (when given) bound what a record may hold:
        witness positions, reference labels and witness values."""
        if not self.path.exists():
            raise CheckpointError(f"`resume`: no checkpoint at {self.path}", field="resume")
        try:
            lines = self.path.read_bytes().split(b"\n")
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc.strerror}") from None
        if lines and lines[-1] == b"":
            lines.pop()
        states: dict[int, SampleState] = {}
        for number, raw in enumerate(lines, 1):
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, an int of 5000 digits
                if number == len(lines):
                    if number == 1:  # killed while writing the header: nothing was saved yet
                        self._fresh = True
                        return {}
                    break  # torn final write
                raise CheckpointError(f"checkpoint {self.path} is corrupt at line {number}; refusing to resume") from None
            if number == 1:
                if not isinstance(record, dict) or record.get("format") != FORMAT:
                    raise CheckpointError(f"{self.path} is not an l0tre checkpoint")
                if record.get("key") != self.key:
                    raise CheckpointError(
                        f"checkpoint {self.path} belongs to another run (model, data, options or seed differ); "
                        "use another `out` or drop `resume`",
                        field="resume",
                    )
                continue
            try:
                if not isinstance(record, dict) or set(record) != {"state"}:
                    raise ValueError("not a state record")
                check_state(record["state"], channels, units, classes, value_range)
                state = SampleState.from_json(record["state"], channels)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise CheckpointError(f"checkpoint {self.path} is corrupt at line {number} ({exc}); refusing to resume") from None
            states[state.index] = state
        if not lines:  # killed between creating the file and writing its header
            self._fresh = True
        return states

    def start(self, resume: bool) -> None:
        try:
            if resume and not self._fresh:
                self._fh = open(self.path, "ab")
                self._repair_tail()
            else:
                self._fh = open(self.path, "wb")
                self._write({"format": FORMAT, "key": self.key, "identity": self.identity})
        except OSError as exc:
            raise OutputError(f"cannot write checkpoint {self.path}: {exc.strerror or exc}") from None

    def _repair_tail(self) -> None:
        """Cut a torn last line so appended records start on a line of their own."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            self._fh.truncate(keep)
            self._fh.seek(keep)

    def record(self, state: SampleState) -> None:
        self._write({"state": state.to_json()})

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self._fh.write(json.dumps(record, default=str).encode() + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OutputError(
                f"cannot write checkpoint {self.path}: {exc.strerror or exc} "
                "(the steps saved before are kept; free space and continue with `resume`)"
            ) from None

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:
                pass  # a failed flush of a torn line: --resume ignores a torn last line


_INT_FIELDS = ("index", "reference", "lower_sound", "lower_discrete", "level", "evaluations")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_state(
    data: Any,
    channels: int,
    units: int | None = None,
    classes: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> None:
    """Raise ValueError unless ``data`` is a well-formed ``SampleState.to_json()`` record."""
    if not isinstance(data, dict):
        raise ValueError("a state must be a JSON object")
    for name in _INT_FIELDS:
        if not _is_int(data.get(name)) or data[name] < 0:
            raise ValueError(f"{name} must be a non-negative integer")
    if classes is not None and data["reference"] >= classes:
        raise ValueError(f"reference {data['reference']} is not one of the model's {classes} classes")
    label = data.get("label")
    if label is not None and not _is_int(label):
        raise ValueError("label must be an integer or null")
    upper = data.get("upper")
    if upper is not None and (not _is_int(upper) or upper < 0):
        raise ValueError("upper must be a non-negative integer or null")
    seconds = data.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
        raise ValueError("seconds must be a non-negative number")
    if not isinstance(data.get("finished"), bool):
        raise ValueError("finished must be true or false")
    if max(data["lower_sound"], data["lower_discrete"]) > data["level"] + 1:
        raise ValueError(f"a lower bound is above what level {data['level']} can prove")
    # a discrete bound may exceed a witness with interior values; a sound one never may
    if upper is not None and data["lower_sound"] > upper:
        raise ValueError(f"sound lower {data['lower_sound']} is above upper {upper}")
    band = data.get("float32_band")
    if band is not None and (not _is_int(band) or band < 1):
        raise ValueError("float32_band must be a positive integer or null")
    if not isinstance(data.get("contradiction", False), bool):
        raise ValueError("contradiction must be true or false")
    w = data.get("witness")
    if w is None:
        if upper is not None:
            raise ValueError(f"upper {upper} has no witness")
        return
    if not isinstance(w, dict) or set(w) != {"units", "values"}:
        raise ValueError("a witness must hold units and values")
    pos, vals = w["units"], w["values"]
    if not isinstance(pos, list) or not all(_is_int(u) and u >= 0 for u in pos):
        raise ValueError("witness units must be non-negative integers")
    if len(set(pos)) != len(pos) or (units is not None and any(u >= units for u in pos)):
        raise ValueError("witness units repeat or lie outside the input")
    if upper != len(pos):
        raise ValueError(f"the witness changes {len(pos)} units but upper is {upper}")
    if not isinstance(vals, list) or len(vals) != len(pos):
        raise ValueError("witness values must hold one row per unit")
    for row in vals:
        if not isinstance(row, list) or len(row) != channels:
            raise ValueError(f"witness values must hold {channels} numbers per unit")
        for v in row:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf")):
                raise ValueError("witness values must be finite numbers")
            # compared in float32, as witnesses are stored and verified
            with np.errstate(over="ignore"):
                inside = value_range is None or np.float32(value_range[0]) <= np.float32(v) <= np.float32(value_range[1])
            if not inside:
                raise ValueError(f"witness value {v} is outside the valid range")
