"""testgen's two per-input parts as tasks an executor can run in other processes.

- ``CasesTask``: the adversarial cases of one input (``generate``); its result is (cases, seconds).
- ``CoverageTask``: the coverage-guided tests of one input (``cover_input``), every input against
  the **same** coverage (the clean inputs and the adversarial cases), never against the tests
  other inputs generated: then an input's tests do not depend on which inputs finished before
  it, wherever it ran. The command merges them in input order (``merge_in_order``).

Each item is the seconds left of the run's time limit (``()``: none), as in ``attack``; a worker
turns it into a deadline on its own clock. Neither part draws random numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from l0tre_core import ClassifierRecipe, SearchContext, ThreatModel, pick_kernels
from l0tre_testgen.coverage import CoverageProbe
from l0tre_testgen.criteria import Criterion
from l0tre_testgen.generate import TestCase, generate
from l0tre_testgen.guided import Generator, InputRecord, cover_input


def input_deadline(run_deadline: float | None, left: Any, input_time_limit: float | None, t0: float) -> float | None:
    """The input's deadline: the run's (``run_deadline`` in this process, or ``left`` seconds
    from now on a worker), or ``input_time_limit`` from ``t0``, whichever comes first."""
    if run_deadline is None and left != ():
        run_deadline = time.monotonic() + left
    deadline = None if input_time_limit is None else t0 + input_time_limit
    if run_deadline is not None:
        deadline = run_deadline if deadline is None else min(deadline, run_deadline)
    return deadline


@dataclass
class CasesTask:
    recipe: ClassifierRecipe | None  # None: only the local worker runs it (the command's model)
    threat: ThreatModel
    x: np.ndarray
    refs: np.ndarray
    max_t: int
    per_input: int
    chunk: int
    input_time_limit: float | None
    device: str

    def open(self, threads: int) -> "CasesWorker":
        assert self.recipe is not None, "a task without a recipe runs only in the command's process"
        host, model = self.recipe.open(threads)
        return CasesWorker(model, pick_kernels(host, self.device), self, None)


@dataclass
class CasesWorker:
    model: Any
    kernels: Any
    task: CasesTask
    run_deadline: float | None  # the command's, in its own process; None on a worker (from the item)

    def run(self, pos: int, left: Any, emit: Callable[[Any], None]) -> tuple[list[TestCase], float]:
        t = self.task
        t0 = time.monotonic()
        ctx = SearchContext(self.model, self.kernels, t.threat, t.x[pos], int(t.refs[pos]), t.chunk)
        cases = generate(ctx, t.max_t, t.per_input, input_deadline(self.run_deadline, left, t.input_time_limit, t0))
        return cases, time.monotonic() - t0


@dataclass
class CoverageTask:
    recipe: ClassifierRecipe | None
    criterion: Criterion
    values: np.ndarray
    max_l0: int
    max_targets: int
    x: np.ndarray
    covered: np.ndarray  # [T] bool: the coverage every input starts from
    input_time_limit: float | None

    def open(self, threads: int) -> "CoverageWorker":
        assert self.recipe is not None, "a task without a recipe runs only in the command's process"
        _, model = self.recipe.open(threads)
        probe = CoverageProbe.from_onnx(model.onnx_model, model.runtime.input_name, threads=threads)
        if probe is None:  # the command found Relu nodes in the same graph
            raise RuntimeError("a worker's model has no Relu nodes, though the command's has")
        gen = Generator(model, probe, self.criterion, self.values, self.max_l0, self.max_targets)
        return CoverageWorker(gen, self, None)


@dataclass
class CoverageWorker:
    gen: Generator
    task: CoverageTask
    run_deadline: float | None

    def run(self, pos: int, left: Any, emit: Callable[[Any], None]) -> InputRecord:
        t = self.task
        t0 = time.monotonic()
        return cover_input(self.gen, t.x[pos], t.covered, input_deadline(self.run_deadline, left, t.input_time_limit, t0))


def merge_in_order(records: dict[int, InputRecord], covered: np.ndarray) -> tuple[list[tuple[int, Any]], int]:
    """The tests of every input, in input order, each with the targets it newly covers after the
    tests before it (``new``); a test that covers nothing new by then (an earlier input's test
    covered it all) is left out. Returns ((position, test) pairs, how many were left out)."""
    seen = covered.copy()
    kept: list[tuple[int, Any]] = []
    duplicates = 0
    for pos in sorted(records):
        for test in records[pos].tests:
            new = test.covers & ~seen
            if not new.any():
                duplicates += 1
                continue
            test.new = np.flatnonzero(new).astype(np.int64)
            seen |= test.covers
            kept.append((pos, test))
    return kept, duplicates
