"""Live progress on stderr: a rich view on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from l0tre_core.bounds import SampleState
from l0tre_core.events import BoundUpdate

PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


class ProgressView:
    def __init__(self, total: int, classifier: Any, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.total = total
        self.classifier = classifier
        self.quiet = quiet
        self.started = time.monotonic()
        self.last: BoundUpdate | None = None
        self.current: SampleState | None = None
        self.last_plain = 0.0
        self.live: Live | None = None

    def __enter__(self) -> "ProgressView":
        if not self.quiet and self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)
        elif not self.quiet and self.last is not None:
            self._plain()

    def __call__(self, update: BoundUpdate, state: SampleState) -> None:
        self.last, self.current = update, state
        if self.live is not None:
            self.live.update(self._render())
        elif not self.quiet and time.monotonic() - self.last_plain >= PLAIN_EVERY:
            self._plain()

    def _rate(self) -> float:
        elapsed = max(1e-9, time.monotonic() - self.started)
        return self.classifier.evaluations / elapsed

    def _plain(self) -> None:
        u = self.last
        assert u is not None
        self.last_plain = time.monotonic()
        print(
            f"[{time.monotonic() - self.started:7.1f}s] inputs {u.done}/{u.total}  "
            f"global lower {_fmt(u.global_lower)} upper {_fmt(u.global_upper)}  "
            f"input {u.index}: {u.lower}..{u.upper if u.upper is not None else '?'} ({u.guarantee}, t={u.level})  "
            f"{self._rate():,.0f} evals/s",
            file=sys.stderr,
            flush=True,
        )

    def _render(self) -> Any:
        u = self.last
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        elapsed = time.monotonic() - self.started
        if u is None:
            table.add_row("starting", f"{self.total} inputs")
            return table
        table.add_row("global robustness", f"lower {_fmt(u.global_lower)}   upper {_fmt(u.global_upper)}  (mean pixels over inputs)")
        table.add_row("inputs", f"{u.done}/{u.total} finished")
        table.add_row(
            "current input",
            f"#{u.index}: {u.lower} <= d* <= {u.upper if u.upper is not None else '?'}  [{u.guarantee}]  t={u.level}",
        )
        table.add_row("speed", f"{self._rate():,.0f} evaluations/s   {elapsed:.1f}s elapsed")
        return Group(Text("l0tre robustness", style="bold cyan"), table)
