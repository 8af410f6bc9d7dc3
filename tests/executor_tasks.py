"""A small task for the executor tests, importable by Ray workers (tests/ is on their path)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class SquareTask:
    """Per input: emits (key, "started"), then returns (key squared, worker pid, threads)."""

    offset: int = 0

    def open(self, threads: int) -> "SquareWorker":
        return SquareWorker(self.offset, threads)


@dataclass
class SquareWorker:
    offset: int
    threads: int

    def run(self, key: int, item: Any, emit: Callable[[Any], None]) -> tuple[int, int, int]:
        emit((key, "started", item))
        return key * key + self.offset, os.getpid(), self.threads
