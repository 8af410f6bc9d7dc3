"""The saliency map of one input as a task an executor can run in another process.

``SaliencyTask`` carries what a worker needs (the model's recipe, the threat model, the inputs and
their reference classes, the sweep's chunk; the recipe holds the memory plan's batch size);
``open`` rebuilds the model there once. Each input's item is its position; the result is its map
and record, the same whichever process computed it (a map has no randomness)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from l0tre_core import ClassifierRecipe, ThreatModel, pick_kernels
from l0tre_saliency.saliency import SaliencyMap


@dataclass
class SaliencyTask:
    recipe: ClassifierRecipe | None  # None: the local worker, built around the command's own model
    threat: ThreatModel
    data: Any
    refs: np.ndarray
    shape: tuple[int, int]
    top: int
    chunk: int
    device: str

    def open(self, threads: int) -> "SaliencyWorker":
        assert self.recipe is not None, "a task without a recipe runs only in the command's process"
        host, model = self.recipe.open(threads)  # with the batch size of the command's memory plan
        return SaliencyWorker(model, pick_kernels(host, self.device), self)


@dataclass
class SaliencyWorker:
    model: Any
    kernels: Any
    task: SaliencyTask

    def run(self, pos: int, item: Any, emit: Callable[[Any], None]) -> tuple[SaliencyMap, dict[str, Any]]:
        from l0tre_saliency.command import saliency_record

        t = self.task
        return saliency_record(self.model, self.kernels, t.threat, t.data, t.refs, pos, t.shape, t.top, t.chunk)
