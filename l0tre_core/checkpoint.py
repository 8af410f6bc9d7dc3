"""Checkpoints: one JSON line per finished step, so a killed run resumes where it stopped.

The first line identifies the run (model digest, data selection, threat model, budgets, seed);
resuming with anything else is refused rather than mixed in. A torn last line (the process was
killed mid-write) is ignored; any other damage is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from l0tre_core.bounds import SampleState
from l0tre_core.errors import CheckpointError

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

    def load(self, channels: int) -> dict[int, SampleState]:
        """The latest state of every input in an existing checkpoint of this same run."""
        if not self.path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {self.path}")
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
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number == len(lines):
                    break  # torn final write
                raise CheckpointError(f"checkpoint {self.path} is corrupt at line {number}; refusing to resume") from None
            if number == 1:
                if not isinstance(record, dict) or record.get("format") != FORMAT:
                    raise CheckpointError(f"{self.path} is not an l0tre checkpoint")
                if record.get("key") != self.key:
                    raise CheckpointError(
                        f"checkpoint {self.path} belongs to another run (model, data, options or seed differ); "
                        "use another --out or drop --resume"
                    )
                continue
            try:
                state = SampleState.from_json(record["state"], channels)
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"checkpoint {self.path} is corrupt at line {number} ({exc}); refusing to resume") from None
            states[state.index] = state
        if not lines:
            raise CheckpointError(f"checkpoint {self.path} is empty")
        return states

    def start(self, resume: bool) -> None:
        if resume:
            self._fh = open(self.path, "ab")
            self._repair_tail()
        else:
            self._fh = open(self.path, "wb")
            self._write({"format": FORMAT, "key": self.key, "identity": self.identity})

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
        self._fh.write(json.dumps(record, default=str).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
