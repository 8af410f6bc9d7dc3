"""Executors: where the per-input work of a run happens (this process, or a Ray cluster).

Every application loops over inputs, and each input's work is independent of the others'. An
executor maps one **task** over the inputs' keys and hands back each input's result as it
finishes, with the updates the input's work emits on the way (bound updates, for ``robustness``):

    for key, result in executor.map(task, keys, item, on_event, local=worker):
        ...

- ``task`` (an ``InputTask``) is picklable: ``task.open(threads)`` runs once in each worker
  process and builds what the work needs there (an inference session, a certifier) from what the
  task carries (a ``ClassifierRecipe``: the model's bytes, its card and the run's plugins); it
  returns an ``InputWorker``;
- ``worker.run(key, item, emit)`` does one input and returns its result; ``emit(event)`` sends an
  event back to the driver, which gets it as ``on_event(key, event)`` as soon as it arrives
  (emit a value you do not change afterwards: a remote executor sends it when it is emitted, the
  local one hands over the object itself);
- ``item(key)`` builds what one input's work needs, when it is dispatched (again when a dead
  worker's input is dispatched anew, so it can start from what was already streamed back);
  None means there is nothing left to do for that key (finished, or the run's time is up): such
  keys are skipped, never recomputed;
- ``local`` is an in-process worker to use instead of opening the task (the local executor),
  so a run on one machine keeps using the model the command has already loaded.

Results come back in the order inputs finish, not in key order; every key whose item was not None
comes back exactly once (a remote executor re-queues the input of a worker that died, and gives
up with ``WorkersLost``, exit code 4, when no worker is left). Seeds must come from the key (the
input's index), never from the worker, so that results do not depend on the executor.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from l0tre_core.errors import EnvironmentProblem, UsageError

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'l0tre[ray]'"


class WorkersLost(EnvironmentProblem):
    """Every worker died and none could be started again (the cluster is gone): exit code 4.
    The inputs finished before are kept; the caller writes them as partial results."""

    result: object = None


@runtime_checkable
class InputWorker(Protocol):
    def run(self, key: int, item: Any, emit: Callable[[Any], None]) -> Any:
        """Do one input's work; ``emit`` streams events back to the driver as they happen."""


@runtime_checkable
class InputTask(Protocol):
    def open(self, threads: int) -> InputWorker:
        """Build a worker in this process; ``threads``: intra-op threads for its inference
        session (0: the runtime's default, every core)."""


class Executor(Protocol):
    name: str

    def map(self, task: InputTask | None, keys: Sequence[int], item: Callable[[int], Any],
            on_event: Callable[[int, Any], None], *, local: InputWorker | None = None) -> Iterator[tuple[int, Any]]:
        """(key, result) for every key whose ``item(key)`` is not None, as each finishes."""

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc: Any) -> None: ...


def make_executor(name: str, address: str | None = None, *, device: str = "auto", workers: int | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); use it as a context manager.

    ``address`` (ray only): None starts a local Ray runtime, ``auto`` joins the cluster this
    machine belongs to, ``HOST:PORT`` or ``ray://HOST:PORT`` one elsewhere."""
    if name not in EXECUTORS:
        raise UsageError(f"`executor` must be local or ray, got {name!r}", field="executor")
    if name == "local":
        if address is not None:
            raise UsageError("`ray_address` is for `executor` ray only", field="ray_address")
        from l0tre_core.executors.local import LocalExecutor

        return LocalExecutor()
    require_ray()
    from l0tre_core.executors.ray_cluster import RayExecutor

    return RayExecutor(address, device=device, workers=workers)


def require_ray() -> None:
    """Exit code 4, saying how to install it, when Ray is not importable."""
    try:
        import ray
    except ImportError:
        ray = None
    # a folder called ray on the path (Ray's own /tmp/ray, when run from /tmp) imports as an empty
    # namespace package: that is not Ray either
    if ray is None or not hasattr(ray, "init"):
        raise EnvironmentProblem("`executor` ray needs Ray, which is not installed", hint=RAY_INSTALL,
                                 field="executor") from None
