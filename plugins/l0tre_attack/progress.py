"""Live progress of an attack on stderr: a rich bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from l0tre_attack.run import AttackRecord

PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class AttackProgress:
    """A listener for ``run_attack``: ``(record, done, total)`` after each input."""

    def __init__(self, total: int, classifier: Any, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.total = total
        self.classifier = classifier
        self.quiet = quiet
        self.started = time.monotonic()
        self.l0: list[float] = []
        self.done = 0
        self.last_plain = 0.0
        self.progress: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> "AttackProgress":
        if not self.quiet and self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold cyan]l0tre attack"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"), console=self.console,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("attack", total=self.total, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        elif not self.quiet and self.done:
            self._plain()

    def stats(self) -> str:
        found = [v for v in self.l0 if np.isfinite(v)]
        median = float(np.median(self.l0)) if self.l0 else float("inf")
        rate = self.classifier.evaluations / max(1e-9, time.monotonic() - self.started)
        med = "-" if not np.isfinite(median) else f"{median:g}"
        return f"success {len(found)}/{self.done}  median L0 {med}  {rate:,.0f} evals/s"

    def __call__(self, record: AttackRecord, done: int, total: int) -> None:
        self.done = done
        self.l0.append(float("inf") if record.l0 is None else float(record.l0))
        if self.progress is not None:
            self.progress.update(self.task, completed=done, stats=self.stats())
        elif not self.quiet and time.monotonic() - self.last_plain >= PLAIN_EVERY:
            self._plain()

    def _plain(self) -> None:
        self.last_plain = time.monotonic()
        print(f"[{time.monotonic() - self.started:7.1f}s] inputs {self.done}/{self.total}  {self.stats()}",
              file=sys.stderr, flush=True)
