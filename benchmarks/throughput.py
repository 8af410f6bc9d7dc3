"""Search throughput against raw onnxruntime, side by side in one run.

For the t=1 and t=2 sweeps on the demo model (or MODEL), measures evaluations per second of the
full search step (building perturbation tensors, running them, reducing scores) and of plain
``session.run`` on already-built batches of the same size, and prints their ratio.

    python benchmarks/throughput.py [--model MODEL] [--repeats 3] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from l0tre_core.data import load_data
from l0tre_core.model import load_model
from l0tre_core.host import create_host
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel


MIN_SECONDS = 1.0  # repeat short sweeps (t=1 is ~1,600 evaluations) until timing is stable


def search_rate(clf, x, ref, t: int, chunk: int) -> tuple[float, int, int]:
    """Evaluations per second of whole sweeps (fresh search context each time, as per input)."""
    threat = ThreatModel(lo=clf.card.lo, hi=clf.card.hi)
    sweeps, evaluated = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < MIN_SECONDS or sweeps == 0:
        ctx = SearchContext(clf, NumpyKernels(), threat, x, ref, chunk)
        sens = ctx.sweep(t, deadline=None)
        evaluated += sens.evaluated
        sweeps += 1
    return evaluated / (time.perf_counter() - start), sens.evaluated, sweeps


def raw_rate(clf, x, per_sweep: int, sweeps: int, batch: int) -> float:
    """Plain session.run on batches built beforehand, in the same batch sizes as the sweeps."""
    rt = clf.runtime
    rng = np.random.default_rng(0)
    xs = np.repeat(x[None], batch, axis=0)
    xs[np.arange(batch), rng.integers(0, xs.shape[1], batch)] = 1.0
    ready = np.ascontiguousarray(clf.model_input(xs))
    sizes = [batch] * (per_sweep // batch) + ([per_sweep % batch] if per_sweep % batch else [])
    feeds = [ready[:size] for size in sizes]
    start = time.perf_counter()
    for _ in range(sweeps):
        for feed in feeds:
            rt.session.run([rt.output_name], {rt.input_name: feed})
    return sweeps * per_sweep / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()
    host = create_host()
    clf = load_model(args.model, batch_size=args.batch_size, host=host)
    data = load_data(None, clf.geometry, clf.card.range, host=host, n=5)
    print(f"model {clf.path.name}, providers {clf.runtime.providers}, batch {args.batch_size}, chunk {args.chunk}")
    for t in (1, 2):
        ratios, search, raw = [], [], []
        for rep in range(args.repeats):
            x = data.x[rep % len(data)]
            ref = int(clf.predict(x[None])[0])
            s, per_sweep, sweeps = search_rate(clf, x, ref, t, args.chunk)
            r = raw_rate(clf, x, per_sweep, sweeps, args.batch_size)
            search.append(s)
            raw.append(r)
            ratios.append(s / r)
        print(
            f"t={t}: search {statistics.median(search):,.0f} evals/s, raw onnxruntime {statistics.median(raw):,.0f} evals/s, "
            f"ratio {statistics.median(ratios):.3f} (median of {args.repeats}; per repeat {', '.join(f'{r:.3f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
