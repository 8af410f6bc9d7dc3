"""The local executor: every input in this process, one after another, in key order."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from l0tre_core.executors import InputTask, InputWorker


class LocalExecutor:
    name = "local"

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def map(self, task: InputTask | None, keys: Sequence[int], item: Callable[[int], Any],
            on_event: Callable[[int, Any], None], *, local: InputWorker | None = None) -> Iterator[tuple[int, Any]]:
        if local is None and task is None:
            raise TypeError("LocalExecutor.map needs a task or a local worker")
        worker = local if local is not None else task.open(0)  # type: ignore[union-attr]
        for key in keys:
            payload = item(key)  # built now, not up front: it may depend on the inputs before
            if payload is None:
                continue
            yield key, worker.run(key, payload, lambda event, key=key: on_event(key, event))
