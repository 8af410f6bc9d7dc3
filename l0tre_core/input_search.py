"""The robustness search of one input as a task an executor can run in another process.

``InputSearch`` carries what a worker needs (the model's recipe, the threat model, the budget,
the lower- and upper-bound methods by name, the seed, the run's inputs and their classes); its
``open`` builds one ``Driver`` per worker, with its own session and certifier. Each input's item is
its ``SampleState`` (fresh, or as far as a checkpoint or a dead worker's streamed steps got) and the
seconds left of the run's time limit; each event is (phase, level worked on, a copy of the state,
the lower-bound methods that failed since the last event: ``Driver.failures``' entries).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from l0tre_core.driver import Budget, Driver
from l0tre_core.errors import EnvironmentProblem
from l0tre_core.executors.recipe import ClassifierRecipe
from l0tre_core.threat import ThreatModel
from l0tre_core.witness import SampleState


@dataclass
class InputSearch:
    model: ClassifierRecipe
    threat: ThreatModel
    budget: Budget
    lower: str  # the lower-bound mode the driver resolved (``auto`` may have become ``discrete``)
    upper: list[str]  # the upper-bound methods after ``sensitivity``, by name
    seed: int
    device: str
    x: np.ndarray | None = None  # the run's inputs and the model's classes (donors of the last resort)
    preds: np.ndarray | None = None

    def with_data(self, x: np.ndarray, preds: np.ndarray) -> "InputSearch":
        return dataclasses.replace(self, x=x, preds=preds)

    def open(self, threads: int) -> "SearchWorker":
        from l0tre_core.api import pick_kernels, resolve_lower, resolve_upper

        assert self.x is not None and self.preds is not None, "InputSearch.with_data first"
        host, classifier = self.model.open(threads)
        kernels = pick_kernels(host, self.device)
        lower, mode, _ = resolve_lower(self.lower, classifier, host, self.x, self.threat, self.seed)
        if mode != self.lower:  # e.g. this worker's session disagrees with the certifier's network
            raise EnvironmentProblem(f"a worker cannot run the lower bounds the run uses ({self.lower}): it would fall "
                                     f"back to {mode}", hint="run with `executor` local, or `lower` discrete")
        driver = Driver(classifier, self.threat, self.budget, kernels, lower=lower,
                        upper_methods=resolve_upper(self.upper, host), seed=self.seed)
        driver._data = (self.x, self.preds)
        return SearchWorker(driver, self.x)


@dataclass
class SearchWorker:
    driver: Driver
    x: np.ndarray

    def run(self, key: int, item: tuple[SampleState, float | None], emit: Callable[[Any], None]) -> SampleState:
        state, left = item
        deadline = None if left is None else time.monotonic() + left  # this machine's clock
        failures = self.driver.failures
        sent = len(failures)

        def forward(pos: int, state: SampleState, phase: str, working: int) -> None:
            nonlocal sent
            # as it is now (the search goes on changing it), with the methods that failed since
            emit((phase, working, copy.deepcopy(state), failures[sent:]))
            sent = len(failures)

        self.driver.forward = forward
        self.driver._search(key, self.x[key], state, deadline)
        if len(failures) > sent:  # after the input's last step (e.g. out of time): no step carries them
            emit(("failures", state.level, state, failures[sent:]))  # (the state is not read: no copy)
        return state
