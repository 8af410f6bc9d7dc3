"""A test plugin: an upper-bound method that kills the process it runs in, inside Ray workers only.

It does nothing unless ``L0TRE_TEST_CRASH_PLAN`` names a JSON file (the Ray tests set it for the
workers alone, never for the test process): ``{"index": K, "times": N}`` kills the worker that
reaches the search phase of input K, ``{"from_index": K, "times": N}`` of any input from K on, at
most N times in all. Each kill is
logged first (one line in the plan's ``.log``), so a test can tell that a worker really died
mid-input. Otherwise it returns no witness, so results are those of a run without it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

from l0tre_core import hookimpl

PLAN_ENV = "L0TRE_TEST_CRASH_PLAN"


class CrashingSearch:
    name = "crash-in-worker"
    kind = "upper"
    description = "test only: kills its Ray worker mid-input as the crash plan says"

    def improve(self, ctx: Any, state: Any, t: int, deadline: float | None, rng: Any) -> None:
        plan_path = os.environ.get(PLAN_ENV)
        if not plan_path or not Path(plan_path).is_file():
            return None
        plan = json.loads(Path(plan_path).read_text())
        log = Path(plan_path + ".log")
        crashes = len(log.read_text().splitlines()) if log.exists() else 0
        hit = state.index == plan.get("index") or state.index >= plan.get("from_index", float("inf"))
        if hit and crashes < plan["times"]:
            with open(log, "a") as fh:
                fh.write(f"{state.index} {os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return None


@hookimpl
def l0tre_register_bound_methods(register: Callable[[Any], None]) -> None:
    register(CrashingSearch())
