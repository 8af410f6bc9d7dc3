"""Checkpoints: one JSON line per finished step, so a killed run resumes where it stopped.

The first line identifies the run (model digest, data selection, threat model, budgets, seed);
resuming with anything else is refused rather than mixed in. A torn last line (the process was
killed mid-write) is ignored; a checkpoint killed before its first line was whole holds no work
and starts afresh; any other damage is an error. Every record is checked field by field (types,
ranges, witness shape) before it is used: a checkpoint is data, never code.

Each step's record also holds ``at``: [seconds since the run began, global lower, global upper]
after that step, so a resumed run's history (``convergence.png``) goes back to the start. A
checkpoint without them (an older l0tre) is replayed instead: time from the inputs' own seconds.
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
        # (seconds since the run began, global lower, global upper) after each step loaded
        self.history: list[tuple[float, float, float | None]] = []

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
        history: list[tuple[float, float, float | None]] = []
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
                if not isinstance(record, dict) or set(record) not in ({"state"}, {"state", "at"}):
                    raise ValueError("not a state record")
                check_state(record["state"], channels, units, classes, value_range)
                state = SampleState.from_json(record["state"], channels)
                at = check_at(record["at"]) if "at" in record else None
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise CheckpointError(f"checkpoint {self.path} is corrupt at line {number} ({exc}); refusing to resume") from None
            states[state.index] = state
            history.append(at if at is not None else self._replayed(states, history))
        if not lines:  # killed between creating the file and writing its header
            self._fresh = True
        self.history = history
        return states

    def _replayed(self, states: dict[int, SampleState],
                  history: list[tuple[float, float, float | None]]) -> tuple[float, float, float | None]:
        """The history point of a record without ``at``: inputs are searched one after another, so
        the time is the sum of their seconds (never before the previous point); inputs without a
        record yet count as unsearched (lower 1, as every input starts, and no witness)."""
        seconds = sum(s.seconds for s in states.values())
        if history:
            seconds = max(seconds, history[-1][0])
        index = self.identity.get("index")
        n = max(len(index) if isinstance(index, list) else 0, len(states))
        lower = (sum(s.lower for s in states.values()) + SampleState.lower_sound * (n - len(states))) / n
        uppers = [s.upper for s in states.values()]
        upper = None if len(states) < n or any(u is None for u in uppers) else sum(uppers) / n  # type: ignore[arg-type]
        return (float(seconds), float(lower), None if upper is None else float(upper))

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

    def record(self, state: SampleState, at: tuple[float, float, float | None] | None = None) -> None:
        """Save a finished step; ``at``: (seconds since the run began, global lower, global upper)."""
        record: dict[str, Any] = {"state": state.to_json()}
        if at is not None:
            t, lower, upper = at
            record["at"] = [round(t, 4), lower, upper]
        self._write(record)

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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def check_at(data: Any) -> tuple[float, float, float | None]:
    """A record's ``at`` as (seconds, global lower, global upper); ValueError unless well formed."""
    if not isinstance(data, list) or len(data) != 3:
        raise ValueError("at must be [seconds, global lower, global upper]")
    t, lower, upper = data
    if not _finite(t) or not _finite(lower) or not (upper is None or _finite(upper)):
        raise ValueError("at must hold non-negative finite numbers (upper may be null)")
    return float(t), float(lower), None if upper is None else float(upper)


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
