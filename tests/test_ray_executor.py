"""The Ray executor: the same results as the local one, and nothing lost or computed twice when a
worker dies. One local Ray runtime (two CPU slots) serves the whole module."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray

from helpers import DEMO_DATA, invoke
from l0tre_core import evaluate, load_data, load_model
from l0tre_core.driver import Budget
from l0tre_core.executors.ray_cluster import RayExecutor
from l0tre_core.host import create_host

TESTS = str(Path(__file__).resolve().parent)
N = 8  # inputs: four per worker


@pytest.fixture(scope="module")
def crash_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a test writes the crash plan the workers read (ray_crash_plugin)."""
    return tmp_path_factory.mktemp("crash") / "plan.json"


@pytest.fixture(scope="module")
def cluster(crash_plan: Path) -> Any:
    # the workers import the crash plugin from tests/, and only they see the plan
    env = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
           "L0TRE_TEST_CRASH_PLAN": str(crash_plan)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20,
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_crash_plan(crash_plan: Path) -> Any:
    yield
    for path in (crash_plan, Path(f"{crash_plan}.log")):
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def run_inputs() -> tuple[Any, Any, Any]:
    host = create_host(["ray_crash_plugin"])
    model = load_model(host=host)
    data = load_data(DEMO_DATA, model.geometry, model.card.range, n=N, host=host)
    return host, model, data


class Steps:
    """A listener: every finished step, every input's finishing, and which worker sent it."""

    def __init__(self, executor: RayExecutor | None = None) -> None:
        self.executor = executor
        self.steps: Counter[tuple[int, int]] = Counter()
        self.finished: Counter[int] = Counter()
        self.workers: set[int] = set()

    def __call__(self, update: Any, state: Any) -> None:
        if self.executor is not None and update.position in self.executor.running:
            self.workers.add(self.executor.running[update.position])
        if update.recorded:
            self.steps[update.index, update.level] += 1
            self.finished[update.index] += update.finished


def per_input(result: Any) -> list[dict[str, Any]]:
    """Each input's result, without its wall time (the only thing allowed to differ)."""
    return [{k: v for k, v in s.to_json().items() if k != "seconds"} for s in result.samples]


@pytest.fixture(scope="module")
def local_result(run_inputs: tuple[Any, Any, Any]) -> Any:
    host, model, data = run_inputs
    return evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host)


def test_two_ray_workers_give_the_local_results(cluster: Any, run_inputs: Any, local_result: Any,
                                                tmp_path: Path) -> None:
    host, model, data = run_inputs
    executor = RayExecutor(workers=2)
    steps = Steps(executor)
    result = evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host, executor=executor,
                      listeners=[steps], out=tmp_path)
    assert per_input(result) == per_input(local_result)
    assert result.complete and len(steps.workers) == 2  # both workers took inputs from the queue
    assert set(steps.finished.values()) == {1} and len(steps.finished) == N
    # the checkpoint streamed from the workers resumes like a local one: nothing left to do
    again = Steps()
    resumed = evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host, out=tmp_path, resume=True,
                       listeners=[again])
    assert per_input(resumed) == per_input(local_result) and not again.steps


def test_a_worker_killed_mid_input_loses_nothing_and_computes_nothing_twice(
        cluster: Any, run_inputs: Any, local_result: Any, crash_plan: Path) -> None:
    host, model, data = run_inputs
    crash_plan.write_text(json.dumps({"index": 3, "times": 1}))
    executor = RayExecutor(workers=2, restarts=0)  # the survivor must finish the run alone
    steps = Steps(executor)
    result = evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host, executor=executor, listeners=[steps])
    log = Path(f"{crash_plan}.log").read_text().split()
    assert log[0] == "3"  # the worker searching input 3 killed itself during its search phase
    assert executor.lost == 1  # and that input went back to the queue
    assert per_input(result) == per_input(local_result) and result.complete
    assert set(steps.steps.values()) == {1}  # no step was recorded twice
    assert set(steps.finished.values()) == {1} and len(steps.finished) == N


def test_a_dead_cluster_writes_partial_results_and_exits_4(cluster: Any, run_inputs: Any, local_result: Any,
                                                          crash_plan: Path, tmp_path: Path) -> None:
    host, model, data = run_inputs
    crash_plan.write_text(json.dumps({"from_index": 3, "times": 1000}))  # every worker dies from input 3 on
    out = tmp_path / "run"
    res = invoke(["robustness", "--data", DEMO_DATA, "--n", N, "--seed", 7, "--out", out, "--executor", "ray", "-q"],
                 plugins=["ray_crash_plugin"])
    assert res.exit_code == 4, res.output
    assert "every Ray worker died" in res.output and "Traceback" not in res.output
    written = json.loads((out / "results.json").read_text())
    assert written["complete"] is False
    done = {s["index"] for s in written["samples"] if s["finished"]}
    assert {0, 1, 2} <= done and not done & set(range(3, N))
    # the run continues on the local executor, from the checkpoint the cluster's steps went to
    Path(f"{crash_plan}").unlink()
    steps = Steps()
    resumed = evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host, out=out, resume=True,
                       listeners=[steps])
    assert per_input(resumed) == per_input(local_result)
    assert not {i for i, _ in steps.steps} & done  # finished inputs were not searched again


def test_any_picklable_task_maps_over_the_ray_workers(cluster: Any) -> None:
    from executor_tasks import SquareTask

    events: list[tuple[int, Any]] = []
    executor = RayExecutor(workers=2)
    got = dict(executor.map(SquareTask(offset=1), range(6), lambda k: None if k == 2 else k,
                            lambda k, e: events.append((k, e))))
    assert {k: r[0] for k, r in got.items()} == {0: 1, 1: 2, 3: 10, 4: 17, 5: 26}  # key 2: nothing to do
    assert sorted(events) == [(k, (k, "started", k)) for k in (0, 1, 3, 4, 5)]
    assert {r[2] for r in got.values()} == {1}  # one intra-op thread per actor (one actor per CPU slot)
    assert len({r[1] for r in got.values()}) == 2 and os.getpid() not in {r[1] for r in got.values()}


def test_the_attack_gives_the_local_records_on_ray(cluster: Any, run_inputs: Any) -> None:
    from l0tre_attack.run import run_attack

    host, model, data = run_inputs
    local = run_attack(model, data, seed=5, host=host, budget=300)
    remote = run_attack(model, data, seed=5, host=host, budget=300, executor=RayExecutor(workers=2))
    strip = lambda result: [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in result.records]  # noqa: E731
    assert strip(remote) == strip(local) and remote.complete
    assert sorted(remote.images) == sorted(local.images)


def test_a_local_run_stopped_midway_resumes_on_ray(cluster: Any, run_inputs: Any, local_result: Any,
                                                   tmp_path: Path) -> None:
    host, model, data = run_inputs

    def stop_after_three(update: Any, state: Any) -> None:
        if update.recorded and update.done == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, after the third input's step was saved

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host, out=tmp_path, listeners=[stop_after_three])
    steps = Steps()
    resumed = evaluate(model, data, budget=Budget(max_t=1), seed=7, host=host, out=tmp_path, resume=True,
                       executor=RayExecutor(workers=2), listeners=[steps])
    assert per_input(resumed) == per_input(local_result) and resumed.complete
    assert sorted(steps.finished) == list(range(3, N))  # the three saved inputs were not searched again


def test_a_head_that_stops_answering_is_a_lost_cluster(cluster: Any) -> None:
    """Ray ends a driver whose head is gone a minute later, before results are written: the
    executor checks the head while it waits (a run whose head was killed mid-run ended with exit
    code 4 and its partial results, by hand with `ray start --head`; here the check itself)."""
    from l0tre_core import WorkersLost

    executor = RayExecutor()
    executor._check_head()  # the fixture's head answers
    executor._head, executor._head_checked = "127.0.0.1:1", 0.0  # nothing listens there
    with pytest.raises(WorkersLost, match="does not answer"):
        executor._check_head()
