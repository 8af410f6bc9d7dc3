"""Progress over the inputs of a run, on stderr, for every application command.

On a terminal it is a rich bar with a line of statistics; otherwise (logs, CI) a plain line every
few seconds, so long runs still show that they are moving. Plugins use it as::

    with InputProgress("saliency", len(data), quiet=common.quiet) as progress:
        for ...:
            progress.update(done, stats="...")

An ``InputProgress`` is also an ``evaluate`` listener: it shows the inputs finished, the global
bounds and the input in progress.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PLAIN_EVERY = 5.0  # seconds between plain progress lines


def _bound(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


class InputProgress:
    def __init__(self, label: str, total: int, quiet: bool = False, classifier: Any = None) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.classifier = classifier  # when given, evaluations per second are shown
        self.console = Console(stderr=True, highlight=False)
        self.done = 0
        self.stats = ""
        self.started = self.last_line = time.monotonic()
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> "InputProgress":
        if not self.quiet and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold cyan]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"), console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif not self.quiet and self.done:
            self._line()

    def update(self, done: int, stats: str = "") -> None:
        self.done = done
        self.stats = stats + self._rate()
        if self._bar is not None:
            self._bar.update(self._task, completed=done, stats=self.stats)
        elif not self.quiet and time.monotonic() - self.last_line >= PLAIN_EVERY:
            self._line()

    def __call__(self, update: Any, state: Any) -> None:
        """An ``evaluate`` listener (``BoundUpdate``, ``SampleState``)."""
        upper = "?" if update.upper is None else update.upper
        self.update(
            update.done,
            f"global {_bound(update.global_lower)}..{_bound(update.global_upper)}  "
            f"#{update.index}: {update.lower}..{upper} [{update.guarantee}] "
            + (f"t={update.level}" if update.phase == "level" else f"t={update.working} {update.phase}"),
        )

    def _rate(self) -> str:
        if self.classifier is None:
            return ""
        rate = self.classifier.evaluations / max(1e-9, time.monotonic() - self.started)
        return f"  {rate:,.0f} evals/s"

    def _line(self) -> None:
        self.last_line = time.monotonic()
        print(f"[{self.last_line - self.started:7.1f}s] {self.label}: {self.done}/{self.total} inputs  {self.stats}",
              file=sys.stderr, flush=True)
