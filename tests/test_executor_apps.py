"""saliency and testgen on the Ray executor: the same files and results as the local executor.
One local Ray runtime (two CPU slots, so two workers) serves the whole module."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from helpers import invoke

NOT_ADOPTED = "not supported by this command yet"  # the warning of a command that ignores --executor


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture
def ray_workers(monkeypatch: pytest.MonkeyPatch) -> list[set[int]]:
    """For each ``map`` the Ray executor ran: the process ids of its pool of workers."""
    from l0tre_core.executors.ray_cluster import RayExecutor

    maps: list[set[int]] = []
    plain = RayExecutor.map

    def watched(self: RayExecutor, *args: Any, **kwargs: Any) -> Any:
        maps.append(set())
        for key, result in plain(self, *args, **kwargs):
            yield key, result
            maps[-1].update(self.pids)  # the pool's actors, each a process of its own

    monkeypatch.setattr(RayExecutor, "map", watched)
    return maps


def run_both(args: list[Any], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
    """``l0tre ARGS`` with the local executor and with Ray: (reports, folders)."""
    reports, folders = [], []
    for name in ("local", "ray"):
        folder = tmp_path / name
        res = invoke([*args, "--out", folder, "--format", "json", "-q", "--executor", name])
        assert res.exit_code == 0, res.stderr
        assert NOT_ADOPTED not in res.stderr
        reports.append(json.loads(res.stdout))
        folders.append(folder)
    return reports[0], reports[1], folders[0], folders[1]


def without_seconds(value: Any) -> Any:
    """A report with every wall time (and the driver's memory) taken out: all else must be equal."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items()
                if k not in ("seconds", "seconds_per_input", "evaluations_per_second", "peak_rss_mb")}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def same_arrays(a: Path, b: Path) -> None:
    with np.load(a) as fa, np.load(b) as fb:
        assert fa.files == fb.files
        for name in fa.files:
            assert np.array_equal(fa[name], fb[name]), name


def test_saliency_on_two_ray_workers_equals_local(cluster: Any, ray_workers: list[set[int]], tmp_path: Path) -> None:
    local, remote, a, b = run_both(["saliency", "--n", 3, "--top", 5], tmp_path)
    assert [len(pids) for pids in ray_workers] == [2] and os.getpid() not in ray_workers[0]
    assert len(local["samples"]) == 3 and local["summary"]["evaluations"] > 0
    assert without_seconds(remote["samples"]) == without_seconds(local["samples"])
    assert without_seconds(remote["summary"]) == without_seconds(local["summary"])
    same_arrays(a / "saliency.npz", b / "saliency.npz")


def test_testgen_on_two_ray_workers_equals_local(cluster: Any, ray_workers: list[set[int]], tmp_path: Path) -> None:
    local, remote, a, b = run_both(["testgen", "--n", 4, "--per-input", 1, "--max-t", 1, "--max-l0", 8], tmp_path)
    assert [len(pids) for pids in ray_workers] == [2, 2]  # the adversarial cases, then the guided tests
    cov = local["coverage"]
    # the run exercises the merge: coverage tests kept, and some left out as an earlier input's
    assert cov["tests"]["coverage"] > 0 and cov["tests"]["left_out_as_covered_by_earlier_inputs"] > 0
    assert without_seconds(remote["samples"]) == without_seconds(local["samples"])
    assert remote["cases"] == local["cases"] and remote["coverage_tests"] == local["coverage_tests"]
    assert remote["coverage"] == cov  # the curve, the tallies, what was tried
    same_arrays(a / "tests.npz", b / "tests.npz")
    assert json.loads((b / "testgen.json").read_text()) == json.loads((a / "testgen.json").read_text())


def test_testgen_merge_does_not_depend_on_the_order_inputs_finish() -> None:
    """The executor hands records back as inputs finish; the merge reads them in input order."""
    from l0tre_testgen.guided import CoverageTest, InputRecord
    from l0tre_testgen.tasks import merge_in_order

    def test(*covers: int) -> CoverageTest:
        mask = np.zeros(4, bool)
        mask[list(covers)] = True
        return CoverageTest(np.array([0]), np.zeros((1, 1), np.float32), covers[0], np.array(covers), 0, mask)

    records = {0: InputRecord([test(1), test(2)]), 1: InputRecord([test(1, 2)]), 2: InputRecord([test(2, 3)])}
    covered = np.array([True, False, False, False])
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        kept, left_out = merge_in_order({k: records[k] for k in order}, covered)
        assert [(pos, t.new.tolist()) for pos, t in kept] == [(0, [1]), (0, [2]), (2, [3])]
        assert left_out == 1  # input 1's test covers only what input 0's did


def test_saliency_writes_the_maps_finished_when_the_cluster_is_lost(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """An executor that loses every worker after two inputs (as Ray's does when the cluster goes):
    the two maps are written, the run says so in one line and exits with code 4."""
    from l0tre_core import WorkersLost
    from l0tre_core.executors.local import LocalExecutor

    plain = LocalExecutor.map

    def dies_after_two(self: LocalExecutor, *args: Any, **kwargs: Any) -> Any:
        for done, pair in enumerate(plain(self, *args, **kwargs), 1):
            yield pair
            if done == 2:
                raise WorkersLost("every Ray worker died; 2 input(s) left unfinished")

    monkeypatch.setattr(LocalExecutor, "map", dies_after_two)
    res = invoke(["saliency", "--n", 4, "--out", tmp_path, "-q"])
    assert res.exit_code == 4
    assert "every Ray worker died" in res.stderr and "2 of 4 maps finished" in res.stderr
    assert "Traceback" not in res.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["complete"] is False and len(report["samples"]) == 2
    with np.load(tmp_path / "saliency.npz") as f:
        assert f["index"].tolist() == [s["index"] for s in report["samples"]] and f["maps"].shape[0] == 2


@pytest.mark.parametrize("survivors", [2, 5])  # lost during the adversarial cases, or during the guided tests
def test_testgen_writes_the_tests_finished_when_the_cluster_is_lost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                    survivors: int) -> None:
    from l0tre_core import WorkersLost
    from l0tre_core.executors.local import LocalExecutor

    plain = LocalExecutor.map
    handed: list[int] = []

    def dies(self: LocalExecutor, *args: Any, **kwargs: Any) -> Any:
        for key, result in plain(self, *args, **kwargs):
            handed.append(key)
            yield key, result
            if len(handed) == survivors:
                raise WorkersLost("every Ray worker died")

    monkeypatch.setattr(LocalExecutor, "map", dies)
    res = invoke(["testgen", "--n", 4, "--per-input", 1, "--max-t", 1, "--max-l0", 8, "--out", tmp_path, "-q"])
    assert res.exit_code == 4 and "every Ray worker died" in res.stderr and "Traceback" not in res.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["complete"] is False
    with np.load(tmp_path / "tests.npz") as f:
        kinds, index = f["kind"].tolist(), f["index"].tolist()
    if survivors == 2:  # two inputs' adversarial cases; no guided tests
        assert len(report["samples"]) == 2 and "coverage" not in report and set(kinds) == {"adversarial"}
    else:  # every input's cases, the first input's guided tests
        first = report["samples"][0]["index"]
        assert len(report["samples"]) == 4 and report["coverage"]["available"]
        assert {i for i, k in zip(index, kinds) if k == "coverage"} == {first}
