"""The executor interface without Ray: the local executor, the shared options, a missing Ray."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from executor_tasks import SquareTask
from helpers import invoke
from l0tre_core import EnvironmentProblem, InputTask, InputWorker, UsageError, make_executor


def test_the_local_executor_maps_in_key_order_skips_done_keys_and_streams_events() -> None:
    events: list[tuple[int, Any]] = []
    with make_executor("local") as executor:
        got = list(executor.map(SquareTask(offset=1), [3, 1, 4, 5], lambda k: None if k == 4 else f"item{k}",
                                lambda k, e: events.append((k, e))))
    assert [(k, r[0]) for k, r in got] == [(3, 10), (1, 2), (5, 26)]  # key 4: nothing left to do
    assert events == [(3, (3, "started", "item3")), (1, (1, "started", "item1")), (5, (5, "started", "item5"))]
    assert isinstance(SquareTask(), InputTask) and isinstance(SquareTask().open(0), InputWorker)


def test_the_local_executor_uses_an_in_process_worker_when_given() -> None:
    local = SquareTask(offset=100).open(0)
    got = dict(make_executor("local").map(None, [2], lambda k: k, lambda k, e: None, local=local))
    assert got[2][0] == 104


def test_bad_executor_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="local or ray"):
        make_executor("dask")
    with pytest.raises(UsageError, match="ray_address"):
        make_executor("local", "auto")


def test_without_ray_the_ray_executor_is_an_environment_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(EnvironmentProblem, match=r"l0tre\[ray\]"):
        make_executor("ray")
    for command in (["robustness"], ["attack"]):
        res = invoke([*command, "--n", "1", "--executor", "ray", "-q"])
        assert res.exit_code == 4, res.output
        assert "--executor ray needs Ray" in res.output and "pip install 'l0tre[ray]'" in res.output


def test_a_folder_named_ray_is_not_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray leaves /tmp/ray behind; run from /tmp, `import ray` finds that folder as an empty
    # namespace package, a module without Ray's API
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    with pytest.raises(EnvironmentProblem, match=r"l0tre\[ray\]"):
        make_executor("ray")


def test_executor_flags_are_checked() -> None:
    res = invoke(["robustness", "--n", "1", "--executor", "dask", "-q"])
    assert res.exit_code == 2 and "--executor must be local or ray" in res.output
    res = invoke(["robustness", "--n", "1", "--ray-address", "auto", "-q"])
    assert res.exit_code == 2 and "--ray-address is for --executor ray only" in res.output


def test_an_unreachable_cluster_is_an_environment_error_at_once() -> None:
    res = invoke(["robustness", "--n", "1", "--executor", "ray", "--ray-address", "127.0.0.1:1", "-q"])
    assert res.exit_code == 4, res.output
    assert "no Ray cluster answers at 127.0.0.1:1" in res.output


class _Elsewhere:
    """An executor that runs each input in a worker opened from the task, as Ray's actors do (in
    this process, so that a test can patch the certifier the worker calls)."""

    name = "elsewhere"

    def map(self, task: Any, keys: Any, item: Any, receive: Any, local: Any = None) -> Any:
        worker = task.open(1)
        for key in keys:
            it = item(key)
            if it is not None:
                yield key, worker.run(key, it, lambda event, key=key: receive(key, event))


def test_a_lower_bound_method_failing_in_a_worker_reaches_the_run_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lower-bound method that raises inside a worker (``Driver.failures`` there) is carried back
    to the head with the input's events, into the run's notes, as in a local run."""
    from helpers import DEMO_DATA
    from l0tre_core import certifier, evaluate, load_data, load_model
    from l0tre_core.driver import Budget

    real = certifier.SoundCertifier.certify
    calls: list[int] = []

    def broken(self: Any, ctx: Any, t: int, deadline: Any) -> Any:
        calls.append(t)
        if len(calls) == 2:
            raise RuntimeError("boom in a worker")
        return real(self, ctx, t, deadline)

    monkeypatch.setattr(certifier.SoundCertifier, "certify", broken)
    model = load_model()
    data = load_data(DEMO_DATA, model.geometry, model.card.range, n=3)
    result = evaluate(model, data, budget=Budget(max_t=1), lower="sound", executor=_Elsewhere())
    assert len(calls) == 3
    assert [n for n in result.model["notes"] if "boom in a worker" in n], result.model["notes"]
    assert sum(s.lower_sound >= 2 for s in result.samples) == 2  # the other inputs keep their certificates


def test_a_worker_given_one_thread_certifies_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker opened with one intra-op thread (as Ray's actors are) passes it to the certifier,
    which then bounds one batch at a time; a local run leaves the certifier its default."""
    from helpers import DEMO_DATA
    from l0tre_core import certify as certify_pkg
    from l0tre_core import evaluate, load_data, load_model
    from l0tre_core.driver import Budget

    real = certify_pkg.certify
    asked: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(certify_pkg, "certify", spy)
    model = load_model()
    data = load_data(DEMO_DATA, model.geometry, model.card.range, n=2)
    evaluate(model, data, budget=Budget(max_t=1), lower="sound", executor=_Elsewhere())
    assert asked and set(asked) == {1}
    asked.clear()
    evaluate(model, data, budget=Budget(max_t=1), lower="sound")
    assert asked and set(asked) == {0}
