"""Progress over the inputs on stderr: a rich bar on a terminal, a plain line every few seconds
otherwise (logs of non-interactive runs stay readable)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PLAIN_EVERY = 5.0  # seconds between plain progress lines


class Steps:
    """``with Steps("saliency", n, quiet) as steps: ... steps.advance()`` once per input."""

    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.console = Console(stderr=True, highlight=False)
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> "Steps":
        if not self.quiet and self.console.is_terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif not self.quiet and self.done:
            self._line()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif not self.quiet and time.monotonic() - self.last_line >= PLAIN_EVERY:
            self._line()

    def _line(self) -> None:
        self.last_line = time.monotonic()
        print(f"[{self.last_line - self.started:7.1f}s] {self.label}: {self.done}/{self.total} inputs", file=sys.stderr, flush=True)
