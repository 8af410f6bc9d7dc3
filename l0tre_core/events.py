"""Bound updates: what the anytime search tells the progress display, the checkpoint and plugins."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoundUpdate:
    """The bounds of one input after a step of its search, and the run's global bounds."""

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
