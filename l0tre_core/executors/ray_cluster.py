"""The Ray executor: the same per-input work on the actors of a Ray cluster.

- One actor per GPU (``num_gpus=1``) where the cluster has GPUs and the device allows them, one
  per CPU slot otherwise; each opens the task once (one inference session with one intra-op
  thread, so actors sharing a machine do not oversubscribe its cores, and one certifier).
- The task (model bytes, data) goes into the object store once; actors read it from there.
- A work queue: an actor gets its next input when it hands back the last one, so slow inputs
  never idle the others.
- Events stream back (a Ray streaming generator per input) and reach ``on_event`` as they come.
- An actor that dies has its input re-queued, built anew by ``item(key)`` (so from what its
  events already streamed back); when none is left, a fresh pool is started once; when that
  fails too, the cluster is gone: ``WorkersLost`` (exit code 4).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Sequence

from l0tre_core.errors import EnvironmentProblem
from l0tre_core.executors import InputTask, InputWorker, WorkersLost

WAIT_SECONDS = 1.0  # how often the driver looks up from waiting (Ctrl-C, dead actors)
CONNECT_SECONDS = 5.0  # a cluster address that does not answer within this is unreachable
HEAD_CHECK_SECONDS = 2.0  # how often a waiting driver checks that the cluster's head answers


class InputActor:
    """The body of one Ray actor: the task opened once, then one input at a time."""

    def __init__(self, task: Any, threads: int) -> None:
        self.task = task
        self.threads = threads
        self.worker: Any = None

    def open(self) -> Any:
        """None, or the exception that stopped the task from opening here (sent as a value, so the
        driver re-raises the user's error rather than seeing a dead actor)."""
        try:
            self.worker = self.task.open(self.threads)
        except Exception as exc:
            return exc
        return None

    def pid(self) -> int:
        return os.getpid()

    def run(self, key: int, item: Any) -> Iterator[tuple[str, Any]]:
        """("event", e) for each event, then ("done", result) or ("error", exception)."""
        box: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

        def work() -> None:
            try:
                box.put(("done", self.worker.run(key, item, lambda event: box.put(("event", event)))))
            except BaseException as exc:  # noqa: BLE001 (handed to the driver, which decides)
                box.put(("error", exc))

        threading.Thread(target=work, name=f"l0tre-input-{key}", daemon=True).start()
        while True:
            message = box.get()
            yield message
            if message[0] != "event":
                return


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, *, device: str = "auto", workers: int | None = None,
                 restarts: int = 1, setup_timeout: float = 300.0, init_options: dict[str, Any] | None = None) -> None:
        self.address = address
        self.device = device
        self.workers = workers  # at most this many actors (None: one per slot)
        self.restarts = restarts  # fresh pools started when every actor has died
        self.setup_timeout = setup_timeout
        self.init_options = dict(init_options or {})
        self.started_runtime = False
        self.lost = 0  # inputs re-queued because their actor died
        self.running: dict[int, int] = {}  # key -> pid of the actor working on it
        self.pids: dict[int, Any] = {}  # pid -> actor, for the actors of the current pool
        self.pool_seconds = 0.0  # time spent starting actors and opening the task in them
        self._head: str | None = None  # the GCS address, checked while waiting
        self._head_checked = 0.0
        self._head_lost = False  # then nothing more is asked of Ray: it would wait for the head

    # -- connection ----------------------------------------------------------------------------
    def __enter__(self) -> "RayExecutor":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        if self.started_runtime and not self._head_lost:  # (a dead head cannot be shut down)
            ray.shutdown()
        self.started_runtime = False

    def connect(self) -> None:
        """Join ``address`` (or start a local runtime); reuse a connection made before."""
        import ray

        if ray.is_initialized():
            _messages_to_stderr()
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                                   "configure_logging": True}
        options.update(self.init_options)
        if self.address not in (None, "auto"):
            _check_reachable(self.address)  # Ray itself retries an unreachable address for minutes
        try:
            # None means a runtime of our own, even where this machine runs a cluster ("local")
            ray.init(address=self.address or "local", **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "a local Ray runtime" if self.address is None else f"the Ray cluster at {self.address!r}"
            raise EnvironmentProblem(f"cannot start or join {where}: {_first_line(exc)}", field="ray_address",
                                     hint="is the cluster up (`ray status`)? without one, drop `ray_address`") from None
        self.started_runtime = self.address is None
        _messages_to_stderr()

    def _check_head(self) -> None:
        """``WorkersLost`` when the cluster's head (its GCS) no longer answers. Ray itself would end
        this process a minute later, before any result is written; finding out first lets the run
        write what it has and exit with code 4."""
        import ray

        if self._head is None:
            self._head = ray.get_runtime_context().gcs_address
        if time.monotonic() - self._head_checked < HEAD_CHECK_SECONDS:
            return
        self._head_checked = time.monotonic()
        try:
            host, _, port = self._head.rpartition(":")
            socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
        except (OSError, ValueError) as exc:
            self._head_lost = True
            raise WorkersLost(f"lost the Ray cluster: its head at {self._head} does not answer "
                              f"({getattr(exc, 'strerror', None) or exc})") from None

    # -- the pool ------------------------------------------------------------------------------
    def _slots(self) -> tuple[int, dict[str, Any]]:
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and self.device != "cpu":
            count, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            count, options = max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}
        if self.workers is not None:
            count = max(1, min(count, self.workers))
        return count, options

    def _start_pool(self, task_ref: Any) -> list[Any]:
        import ray

        started = time.monotonic()
        count, options = self._slots()
        actor_class = ray.remote(InputActor).options(**options, max_restarts=0)
        actors = [actor_class.remote(task_ref, 1) for _ in range(count)]
        try:
            opened = ray.get([a.open.remote() for a in actors], timeout=self.setup_timeout)
        except ray.exceptions.GetTimeoutError:
            _kill(actors)
            raise WorkersLost(f"no Ray worker started within {self.setup_timeout:g} s (is the cluster busy or gone?)") from None
        except ray.exceptions.RayError as exc:
            _kill(actors)
            raise WorkersLost(f"the Ray workers died while starting: {_first_line(exc)}") from None
        for failure in opened:
            if failure is not None:
                _kill(actors)
                raise failure
        self.pids = dict(zip(ray.get([a.pid.remote() for a in actors]), actors))
        self.pool_seconds += time.monotonic() - started
        return actors

    # -- the work queue ------------------------------------------------------------------------
    def map(self, task: InputTask | None, keys: Sequence[int], item: Callable[[int], Any],
            on_event: Callable[[int, Any], None], *, local: InputWorker | None = None) -> Iterator[tuple[int, Any]]:
        import ray
        from ray.exceptions import RayActorError, RayError

        if task is None:
            raise TypeError("RayExecutor.map needs a task (a local worker cannot run on the cluster)")
        self.connect()
        todo = deque(keys)
        if not todo:
            return
        task_ref = ray.put(task)  # once, through the object store: actors read it from there
        actors = self._start_pool(task_ref)
        pid_of = {id(a): pid for pid, a in self.pids.items()}
        idle = list(actors)
        flying: dict[Any, tuple[Any, int]] = {}  # streaming generator -> (actor, key)
        restarts = self.restarts
        try:
            while True:
                while idle and todo:
                    key = todo.popleft()
                    payload = item(key)  # built at dispatch: a re-queued input starts from its latest state
                    if payload is None:
                        continue
                    actor = idle.pop()
                    flying[actor.run.options(num_returns="streaming").remote(key, payload)] = (actor, key)
                    self.running[key] = pid_of[id(actor)]
                if not flying:
                    if not todo:
                        return
                    if not actors:  # every actor died with work left: start afresh, or give up
                        self._check_head()
                        if restarts <= 0:
                            raise WorkersLost(f"every Ray worker died; {len(todo)} input(s) left unfinished")
                        restarts -= 1
                        actors = self._start_pool(task_ref)
                        pid_of = {id(a): pid for pid, a in self.pids.items()}
                        idle = list(actors)
                    continue
                try:
                    ready, _ = ray.wait(list(flying), num_returns=1, timeout=WAIT_SECONDS)
                except RayError as exc:
                    raise WorkersLost(f"lost the Ray cluster: {_first_line(exc)}") from None
                if not ready:
                    self._check_head()
                for gen in ready:
                    actor, key = flying[gen]
                    try:
                        kind, value = ray.get(next(gen))
                    except StopIteration:  # ended without a result: treat as a death
                        kind, value = "died", None
                    except RayActorError:
                        kind, value = "died", None
                    except RayError as exc:
                        raise WorkersLost(f"lost the Ray cluster: {_first_line(exc)}") from None
                    if kind == "event":
                        on_event(key, value)
                        continue
                    del flying[gen]
                    self.running.pop(key, None)
                    if kind == "done":
                        idle.append(actor)
                        yield key, value
                    elif kind == "error":
                        raise value
                    else:  # the actor is gone: its input goes back to the front of the queue
                        self.lost += 1
                        actors = [a for a in actors if a is not actor]
                        idle = [a for a in idle if a is not actor]
                        todo.appendleft(key)
        finally:
            if not self._head_lost:
                _kill(actors)  # Ctrl-C, an error or the end: stop whatever still runs
            self.running.clear()


def _check_reachable(address: str) -> None:
    """Exit code 4 at once when nothing listens at ``HOST:PORT`` (or ``ray://HOST:PORT``)."""
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise EnvironmentProblem(f"`ray_address` must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}",
                                 field="ray_address")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise EnvironmentProblem(f"no Ray cluster answers at {address} ({exc.strerror or exc})", field="ray_address",
                                 hint="is the head node up? `ray status` on it shows its address") from None


def _messages_to_stderr() -> None:
    """Ray prints the raylet's messages (e.g. "A worker died ...") on the driver's stdout, where
    they would break ``--format json``; send them to stderr with the other messages."""
    try:
        from ray._private import worker as ray_worker

        original = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # another Ray: leave it as it is
        return
    if getattr(original, "l0tre", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.l0tre = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _kill(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

