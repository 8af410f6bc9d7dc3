"""What a robustness run costs: inputs x C(units, t) x |V|^t model evaluations per level t, at a
rate measured on the model itself (a short timed batch)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

DEMO_N = 20  # inputs of a bare `l0tre robustness` on the embedded demo: about half a minute on two cores
LARGE = 600.0  # seconds: a run estimated to take longer says so before it starts
MEASURE_SECONDS = 0.2  # the timed batch grows until it takes this long (or reaches MAX_BATCH)
MAX_BATCH = 4096


def evaluations(inputs: int, units: int, values: int, max_t: int, first_t: int = 1) -> int:
    """Model evaluations of the enumeration of every level t = first_t..max_t over ``inputs`` inputs."""
    return inputs * sum(math.comb(units, t) * values**t for t in range(first_t, max_t + 1))


def measure_rate(model: Any, x: np.ndarray) -> float:
    """Model evaluations per second on batches of ``x[0]`` (doubling the batch until it takes
    ``MEASURE_SECONDS``); inf when ``x`` is empty."""
    if len(x) == 0:
        return math.inf
    model.predict(x[:1])  # warm up the session
    batch = 16
    while True:
        xs = np.repeat(x[:1], batch, axis=0)
        started = time.perf_counter()
        model.predict(xs)
        seconds = time.perf_counter() - started
        if seconds >= MEASURE_SECONDS or batch >= MAX_BATCH:
            return batch / max(seconds, 1e-9)
        batch *= 2


def duration(seconds: float) -> str:
    """``seconds`` as a short human duration: 40 s, 12 min, 3.5 h, 2.1 days."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate_line(inputs: int, units: int, values: int, max_t: int, rate: float) -> str:
    """The stderr line before a long run."""
    count = evaluations(inputs, units, values, max_t)
    terms = " + ".join(f"C({units}, {t}) x {values}^{t}" for t in range(1, max_t + 1))
    return (
        f"estimated cost: {inputs} input{'' if inputs == 1 else 's'} x ({terms}) = {count:.3g} evaluations "
        f"at {rate:,.0f} evaluations/s: about {duration(count / rate)} "
        "(fewer inputs with --n, a smaller --max-t, or stop it with --time-limit)"
    )


def further_line(*, inputs: int, total: int, seconds: float, units: int, values: int, max_t: int, rate: float,
                 certify_seconds: float = 0.0) -> str:
    """The one line after a run: how to go further and what it would cost (the next level: its
    enumeration at ``rate``, plus ``certify_seconds`` of certificate splitting per input). With
    certificates the enumeration runs only where one does not prove the level, so the figure is
    a ceiling ("up to")."""
    options = []
    if inputs < total:
        per_input = seconds / max(1, inputs)
        options.append(f"all {total} inputs with --n {total} (about {duration(per_input * total)})")
    more = evaluations(inputs, units, values, max_t + 1, first_t=max_t + 1)
    next_level = more / rate + inputs * certify_seconds
    bound = "up to about" if certify_seconds else "about"
    options.append(f"--max-t {max_t + 1} ({bound} {duration(seconds + next_level)} on these {inputs} input{'' if inputs == 1 else 's'})")
    return "to go further: " + ", or ".join(options)
