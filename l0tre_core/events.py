"""Bound updates: what the anytime search tells the progress display, the checkpoint and plugins.

One event type for every listener (the live view, the checkpoint, the ``l0tre_bounds_updated``
hook, executors that stream results back): an input's bounds, the level and phase its search is
in, and the run's global bounds. ``phase`` is ``sweep`` (enumeration over V), ``certify`` (a sound
certifier) or ``search`` (upper-bound methods) when a phase starts, and ``level`` when a level's
step has finished (the checkpoint records those, and ``finished`` ones).
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("sweep", "certify", "search", "level")


@dataclass(frozen=True)
class BoundUpdate:
    """The bounds of one input during or after a step of its search, and the run's global bounds."""

    index: int  # position of the input in the data file
    position: int  # position of the input in this run (0-based)
    lower: int
    upper: int | None
    guarantee: str  # sound | discrete | none
    level: int  # highest subset size t whose step finished
    evaluations: int
    seconds: float
    finished: bool
    global_lower: float
    global_upper: float | None
    done: int  # inputs finished so far
    total: int
    phase: str = "level"  # see PHASES
    working: int = 0  # the level being worked on (level + 1 during a phase)

    @property
    def rate(self) -> float:
        """Model evaluations per second spent on this input so far."""
        return self.evaluations / self.seconds if self.seconds > 0 else 0.0

    @property
    def recorded(self) -> bool:
        """Whether this update ends a step (the checkpoint keeps those)."""
        return self.phase == "level"
