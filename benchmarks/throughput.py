"""Search throughput against raw onnxruntime, side by side in one run.

For the t = 1 and t = 2 sweeps on each model, measures evaluations per second of the whole search
step (unranking subsets, writing perturbed batches in the model's layout, running them, reducing
scores), with the batch size chosen by the search itself (``l0tre_core.batching``), against plain
``session.run`` of the same session (so the same session options) on batches built beforehand, in
the raw side's own best batch size (the fastest of CANDIDATES, measured first by each size's
fastest call). Search steps (t = 1: a whole sweep of one input; t = 2: one chunk of 4,096) alternate
with raw blocks of the same number of evaluations, so load changes hit both alike. Two ratios: of
the summed wall times, and of the fastest step of each side (the figure least disturbed by other
processes on a shared machine: they can only add time).

    python benchmarks/throughput.py [--models demo,mlp] [--steps 200]

``mlp`` is tests/data/models/mlp_b1.onnx (784-100-100-10); any other name is read as a model path.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from l0tre_core.data import load_data
from l0tre_core.host import create_host
from l0tre_core.model import load_model
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel

ROOT = Path(__file__).resolve().parent.parent
NAMED = {"demo": None, "mlp": ROOT / "tests" / "data" / "models" / "mlp_b1.onnx"}
CANDIDATES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
CHUNK = 4096  # the driver's chunk: perturbed inputs per search step


def search_step(clf, ctxs, t: int, i: int) -> tuple[int, float]:
    """Evaluations and seconds of one search step: at t = 1 a whole sweep of a fresh search context
    (per-input set-up included, as each input pays it); at t = 2 the first chunk of CHUNK
    perturbed inputs of the sweep (a sweep cut by its deadline after one chunk)."""
    x, ref = ctxs[i % len(ctxs)]
    threat = ThreatModel(lo=clf.card.lo, hi=clf.card.hi)
    start = time.perf_counter()
    ctx = SearchContext(clf, NumpyKernels(), threat, x, ref, CHUNK)
    sens = ctx.sweep(t, deadline=None if t == 1 else -1.0)
    return sens.evaluated, time.perf_counter() - start


def raw_feed(clf, x, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    xs = np.repeat(x[None], batch, axis=0)
    xs[np.arange(batch), rng.integers(0, xs.shape[1], batch)] = clf.card.hi
    return np.ascontiguousarray(clf.model_input(xs))


def raw_block(clf, ready: np.ndarray, evaluations: int) -> float:
    """Seconds of plain session.run over ``evaluations`` inputs in batches of len(ready)."""
    rt = clf.runtime
    batch = len(ready)
    sizes = [batch] * (evaluations // batch) + ([evaluations % batch] if evaluations % batch else [])
    start = time.perf_counter()
    for size in sizes:
        rt.session.run([rt.output_name], {rt.input_name: ready[:size]})
    return time.perf_counter() - start


def raw_best_batch(clf, x) -> tuple[int, dict[int, float]]:
    """The raw side's best batch size: highest rate of each size's fastest call (the minimum is
    the figure other processes on the machine disturb least)."""
    rates = {}
    for b in CANDIDATES:
        ready = raw_feed(clf, x, b)
        raw_block(clf, ready, b)  # warm
        rates[b] = b / min(raw_block(clf, ready, b) for _ in range(max(3, 32768 // b)))
    return max(rates, key=rates.get), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,mlp")
    parser.add_argument("--steps", type=int, default=200, help="search steps (each paired with a raw block) per t")
    args = parser.parse_args()
    host = create_host()
    for name in args.models.split(","):
        clf = load_model(NAMED.get(name, name), host=host)
        data = load_data(None, clf.geometry, clf.card.range, host=host, n=8)
        inputs = list(zip(data.x, (int(r) for r in clf.predict(data.x))))
        i = 0
        while clf.tuner.chosen is None:  # the search's tuner settles during its first steps (untimed)
            search_step(clf, inputs, 2, i)
            i += 1
        best, rates = raw_best_batch(clf, data.x[0])
        ready = raw_feed(clf, data.x[0], best)
        print(f"model {name}: providers {clf.runtime.providers}, session {clf.runtime.session_options}")
        print(f"  search batch (tuned in {i} steps): {clf.tuner.chosen}; raw best batch: {best} "
              f"(raw evals/s of the fastest call, by batch: {', '.join(f'{b}: {r:,.0f}' for b, r in rates.items())})")
        for t in (1, 2):
            s_time, r_time, s_min, r_min, total = 0.0, 0.0, math.inf, math.inf, 0
            for step in range(args.steps):
                n, s_sec = search_step(clf, inputs, t, step)
                r_sec = raw_block(clf, ready, n)
                s_time, r_time, total = s_time + s_sec, r_time + r_sec, total + n
                s_min, r_min = min(s_min, s_sec / n), min(r_min, r_sec / n)
            print(f"  t={t}: {args.steps} steps of {n} evaluations; wall: search {total / s_time:,.0f} evals/s, "
                  f"raw onnxruntime {total / r_time:,.0f} evals/s, ratio {r_time / s_time:.3f}; "
                  f"fastest step: search {1 / s_min:,.0f}, raw {1 / r_min:,.0f}, ratio {r_min / s_min:.3f}")


if __name__ == "__main__":
    main()
