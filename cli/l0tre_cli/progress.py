"""Progress over the inputs of a run, on stderr, for every application command.

On a terminal it is a rich bar with the time left and a line of statistics; otherwise (logs, CI) a
plain line every few seconds, so long runs still show that they are moving. Plugins use it as::

    with InputProgress("saliency", len(data), quiet=common.quiet) as progress:
        for ...:
            progress.update(done, stats="...")

An ``InputProgress`` is also an ``evaluate`` listener: it shows the inputs finished, the global
bounds with the mix of lower-bound guarantees, and the input in progress (its bounds, the level t
and phase its search is in, and its evaluations per second). With ``resumed=True`` it says once
how many inputs the checkpoint had finished, and counts them as done from the start.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY = 5.0  # seconds between plain progress lines


def _bound(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def live_stats(update: Any, guarantees: Counter[str]) -> str:
    """The statistics of a ``BoundUpdate``: global bounds, guarantee mix, the current input."""
    mix = ", ".join(f"{n} {g}" for g, n in sorted(guarantees.items()))
    upper = "?" if update.upper is None else update.upper
    where = f"t={update.level} done" if update.phase == "level" else f"t={update.working} {update.phase}"
    return (
        f"global {_bound(update.global_lower)}..{_bound(update.global_upper)} [{mix}]  "
        f"#{update.index}: {update.lower}..{upper} {where} {update.rate:,.0f} evals/s"
    )


class InputProgress:
    def __init__(self, label: str, total: int, quiet: bool = False, classifier: Any = None, resumed: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.classifier = classifier  # when given, evaluations per second are shown by update()
        self.resumed = resumed  # a --resume run: the first event tells how many inputs were finished
        self.console = Console(stderr=True, highlight=False)
        self.done = 0
        self.stats = ""
        self.started = self.last_line = time.monotonic()
        self.guarantees: dict[int, str] = {}
        self._seen_event = False
        self._printed: tuple[int, str] | None = None
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> "InputProgress":
        if not self.quiet and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold cyan]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}", markup=False),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif not self.quiet and self.done and self._printed != (self.done, self.stats):
            self._line()  # the final state, unless the last periodic line already showed it

    def update(self, done: int, stats: str = "", rate: bool = True) -> None:
        self.done = done
        self.stats = stats + (self._rate() if rate else "")
        if self._bar is not None:
            self._bar.update(self._task, completed=done, stats=self.stats)
        elif not self.quiet and time.monotonic() - self.last_line >= PLAIN_EVERY:
            self._line()

    def __call__(self, update: Any, state: Any) -> None:
        """An ``evaluate`` listener (``BoundUpdate``, ``SampleState``)."""
        if not self._seen_event:
            self._seen_event = True
            if self.resumed:
                self._resumed(update.done - (1 if update.finished else 0))
        self.guarantees[update.index] = update.guarantee
        self.update(update.done, live_stats(update, Counter(self.guarantees.values())), rate=False)

    def _resumed(self, finished: int) -> None:
        """Say once how many inputs the checkpoint had finished; they count as done from the start."""
        if finished <= 0:
            return
        self.done = finished
        if self._bar is not None:
            self._bar.reset(self._task, completed=finished)  # the time left is estimated from new work only
            self._bar.console.print(f"resumed {finished} finished input{'' if finished == 1 else 's'}", markup=False)
        elif not self.quiet:
            print(f"resumed {finished} finished input{'' if finished == 1 else 's'}", file=sys.stderr, flush=True)

    def _rate(self) -> str:
        if self.classifier is None:
            return ""
        rate = self.classifier.evaluations / max(1e-9, time.monotonic() - self.started)
        return f"  {rate:,.0f} evals/s"

    def _line(self) -> None:
        self.last_line = time.monotonic()
        self._printed = (self.done, self.stats)
        print(f"[{self.last_line - self.started:7.1f}s] {self.label}: {self.done}/{self.total} inputs  {self.stats}",
              file=sys.stderr, flush=True)
