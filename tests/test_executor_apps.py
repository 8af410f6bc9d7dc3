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
