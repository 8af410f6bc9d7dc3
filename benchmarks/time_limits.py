"""Where each input's seconds go past its time limit (issue #10): one command.

    nice -n 5 python benchmarks/time_limits.py [--model mnist_convsmall] [--n 5] [--t 2] [--limit 10]
    L0TRE_ENGINE=/path/to/other/tree nice -n 5 python benchmarks/time_limits.py ...   # another engine

The first ``--n`` held-out inputs the zoo model classifies correctly go through the engine as
``benchmarks/certify.py`` runs them (``evaluate``, ``--lower auto --upper none --max-t t
--input-time-limit L``, ``certify_time`` = L). Each phase of each level is timed from outside (the
sound certifier, the discrete enumeration, the sweep, the sensitivity union, tightening); per input
it prints the engine's seconds, then every phase that ran past the input's deadline and by how much.

``L0TRE_ENGINE`` imports ``l0tre_core`` from another checkout (``git archive COMMIT l0tre_core |
tar -x -C DIR``; needs this tree installed editable, as the set-up installs it), so two engines
run side by side under the same load: start one in the background, the other in the foreground.
"""

from __future__ import annotations

import os

if os.environ.get("L0TRE_ENGINE"):  # before anything imports l0tre_core
    import __editable___l0tre_0_1_0_finder as finder  # type: ignore[import-not-found]

    finder.MAPPING["l0tre_core"] = os.path.join(os.environ["L0TRE_ENGINE"], "l0tre_core")

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import certify as bench  # noqa: E402  (the zoo, its data and the status of an input at t)


def _timed(log: list[tuple[str, float, float]], owner: Any, attr: str, label: str) -> None:
    real: Callable[..., Any] = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            log.append((label, started, time.monotonic()))

    setattr(owner, attr, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_convsmall", choices=list(bench.PLAN))
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--t", type=int, default=2)
    parser.add_argument("--limit", type=float, default=10.0)
    args = parser.parse_args()

    import l0tre_core.certifier as certifier
    import l0tre_core.driver as driver
    import l0tre_core.methods as methods
    import l0tre_core.sweep as sweep
    from l0tre_core import Budget, Dataset, evaluate, load_data, load_model

    print(f"engine: {Path(sweep.__file__).parent}", flush=True)
    clf = load_model(bench.ZOO / f"{args.model}.onnx", device="cpu")
    pool = load_data(bench.FASHION_DATA if args.model.startswith("fmnist") else bench.MNIST_DATA,
                     clf.geometry, tuple(clf.card.range))
    keep = np.flatnonzero(clf.predict(pool.x) == pool.y)[: args.n]
    data = Dataset(pool.x[keep], pool.y[keep], pool.index[keep], pool.source, pool.sample_shape, pool.layout)

    log: list[tuple[str, float, float]] = []
    deadlines: list[float | None] = []  # each input's deadline, as the driver computed it
    real_level = driver.Driver._level

    def level(self: Any, ctx: Any, t: int, state: Any, deadline: float | None, phase: Any) -> bool:
        if t == 1:
            deadlines.append(deadline)
        return real_level(self, ctx, t, state, deadline, phase)

    driver.Driver._level = level  # type: ignore[method-assign]
    _timed(log, certifier.SoundCertifier, "certify", "sound certifier")
    _timed(log, methods.Enumeration, "certify", "discrete enumeration")
    for attr, label in (("sweep", "sweep"), ("cumulative_union", "sensitivity union"), ("tighten", "tighten")):
        _timed(log, sweep.SearchContext, attr, label)

    result = evaluate(clf, data, budget=Budget(max_t=args.t, input_time_limit=args.limit, certify_time=args.limit),
                      lower="auto", upper=["none"], device="cpu")
    overruns = []
    for k, s in enumerate(result.samples):
        deadline = deadlines[k] if k < len(deadlines) else None
        print(f"input {s.index}: {bench.status_at(s, args.t)}, {s.seconds:.2f} s, {s.evaluations} evaluations")
        overruns.append(s.seconds - args.limit)
        if deadline is None:
            continue
        nxt = deadlines[k + 1] if k + 1 < len(deadlines) and deadlines[k + 1] is not None else float("inf")
        for label, start, end in log:
            if end > deadline and start < nxt - args.limit:  # this input's phases that ended past its deadline
                where = "started" if start > deadline else "ran"
                print(f"    {label}: {where} {end - max(start, deadline):.2f} s past the deadline")
    print(f"past the limit: median {np.median(overruns):+.2f} s, max {max(overruns):+.2f} s")


if __name__ == "__main__":
    main()
