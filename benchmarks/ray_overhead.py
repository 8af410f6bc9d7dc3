"""The same robustness run with the local executor and with Ray, side by side, and what Ray adds
per input.

Runs ``evaluate`` on N inputs of the demo (or MODEL/DATA) four ways in one process: the local
executor (one onnxruntime session with its default threads, every core; then with one thread),
Ray with one actor per CPU slot (one intra-op thread each), and Ray with one actor. The local Ray runtime gets ``--cpus``
slots (default 2) and is started once, before the timings; the pool start (actors, model, certifier
check) is reported apart. The overhead per input is measured twice: a no-op task mapped through
the queue (dispatch, streaming generator, one event, the result), and on the robustness run with
one actor: (wall - pool start - the inputs' own search seconds - the driver's preparation, measured
on the local run as its wall - its search seconds) / N. Results are checked equal
(every per-input field but the seconds).

    python benchmarks/ray_overhead.py [--n 40] [--cpus 2] [--max-t 1] [--model MODEL --data DATA]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

from l0tre_core import evaluate, load_data, load_model
from l0tre_core.driver import Budget
from l0tre_core.executors.ray_cluster import RayExecutor
from l0tre_core.executors.recipe import ClassifierRecipe
from l0tre_core.host import create_host


@dataclass
class NoopTask:
    """Does nothing per input but emit one event and return: the queue's cost alone."""

    def open(self, threads: int) -> "NoopTask":
        return self

    def run(self, key: int, item: Any, emit: Callable[[Any], None]) -> int:
        emit(key)
        return key


def per_input(result: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.to_json().items() if k != "seconds"} for s in result.samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--max-t", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noop", type=int, default=400, help="inputs of the no-op task")
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    host = create_host()
    model = load_model(args.model, host=host)
    data = load_data(args.data, model.geometry, model.card.range, n=args.n, host=host)
    budget = Budget(max_t=args.max_t)
    print(f"{len(data)} inputs, max_t {args.max_t}, load average {os.getloadavg()[0]:.2f} before")

    started = time.monotonic()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    print(f"Ray runtime start: {time.monotonic() - started:.2f} s (once per command; not in the rows below)")

    rows = []
    started = time.monotonic()
    local = evaluate(model, data, budget=budget, seed=args.seed, host=host)
    rows.append(("local (1 session, default threads)", time.monotonic() - started, 0.0, local))
    # the same session with one intra-op thread, as each Ray actor has: the executor's effect apart
    # from the thread count's
    _, one_thread = ClassifierRecipe.of(model, host).open(threads=1)
    started = time.monotonic()
    single = evaluate(one_thread, data, budget=budget, seed=args.seed, host=host)
    rows.append(("local (1 session, 1 thread)", time.monotonic() - started, 0.0, single))
    assert per_input(single) == per_input(local), "one thread differs from the default threads"
    for workers in (args.cpus, 1):
        executor = RayExecutor(workers=workers)
        started = time.monotonic()
        result = evaluate(model, data, budget=budget, seed=args.seed, host=host, executor=executor)
        rows.append((f"ray, {workers} actor{'s' if workers > 1 else ''} x 1 thread", time.monotonic() - started,
                     executor.pool_seconds, result))
        assert per_input(result) == per_input(local), f"ray with {workers} workers differs from local"

    print(f"\n{'executor':<36} {'wall s':>8} {'pool start s':>13} {'wall - start':>13} {'vs local':>9}")
    for name, wall, pool, _ in rows:
        print(f"{name:<36} {wall:8.2f} {pool:13.2f} {wall - pool:13.2f} {wall / rows[0][1]:8.2f}x")

    # the driver's own preparation (certifier check, predictions, result files) is in every row:
    # measure it on the local run (wall - the inputs' search seconds) and take it out
    _, local_wall, _, _ = rows[0]
    fixed = local_wall - sum(s.seconds for s in local.samples)
    name, wall, pool, one = rows[-1]
    work = sum(s.seconds for s in one.samples)
    print(f"\ndriver preparation (local wall - search seconds): {fixed:.2f} s")
    print(f"per-input overhead, robustness with one actor: (wall {wall:.2f} - pool start {pool:.2f} - search "
          f"{work:.2f} - preparation {fixed:.2f}) / {len(data)} = {1000 * (wall - pool - work - fixed) / len(data):.1f} ms")

    executor = RayExecutor(workers=args.cpus)
    events: list[int] = []
    started = time.monotonic()
    got = list(executor.map(NoopTask(), range(args.noop), lambda k: k, lambda k, e: events.append(e)))
    seconds = time.monotonic() - started - executor.pool_seconds  # the queue alone, without starting the pool
    assert len(got) == args.noop and len(events) == args.noop
    print(f"per-input overhead, no-op task on {args.cpus} actors: {seconds:.2f} s / {args.noop} = "
          f"{1000 * seconds / args.noop:.2f} ms per input (queue, one event, the result)")
    print(f"load average {os.getloadavg()[0]:.2f} after")
    ray.shutdown()


if __name__ == "__main__":
    main()
