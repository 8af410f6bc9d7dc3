"""Search throughput against raw onnxruntime, side by side in one run.

For the t = 1 and t = 2 sweeps on each model, measures evaluations per second of the whole search
step (unranking subsets, writing perturbed batches in the model's layout, running them, reducing
scores), with the batch size chosen by the search itself (``l0tre_core.batching``), against plain
``session.run`` of the same session (so the same session options) on the same perturbed inputs
built beforehand, in the raw side's own best batch size (the fastest of CANDIDATES, measured first
by each size's fastest pass). Search steps (t = 1: a whole sweep of one input; t = 2: one chunk of 4,096) alternate
with raw blocks of the same number of evaluations, so load changes hit both alike. Three ratios:
of the summed wall times; of the fastest step of each side (other processes on a shared machine
can only add time); and of the CPU time the process used on each side, all threads counted
(descheduling by other processes does not count there, onnxruntime's spinning threads do).

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


def raw_pool(clf, x, ref, t: int) -> np.ndarray:
    """The search step's own perturbed inputs, built beforehand in the model's layout: the raw side
    runs exactly the inputs the search runs (distinct rows, as a stream of real inputs would be,
    not one small batch fed again and again from the cache)."""
    from l0tre_core.tensors import assignment_digits, binomial_table, unrank_subsets

    ctx = SearchContext(clf, NumpyKernels(), ThreatModel(lo=clf.card.lo, hi=clf.card.hi), x, ref, CHUNK)
    n, nv = ctx.encoder.n_units, len(ctx.values)
    per = nv**t
    m = min(CHUNK // per, len(range(binomial_table(n, t)[n, t])))
    subsets = unrank_subsets(np.arange(m), n, t)
    units = np.repeat(subsets, per, axis=0)
    values = np.tile(ctx.values[assignment_digits(np.arange(per), nv, t)], (m, 1, 1))
    pos, val = ctx.encoder.encode(units, values)
    flat = NumpyKernels().perturb(ctx.base, pos, val)
    return np.ascontiguousarray(flat.reshape(len(flat), *clf.geometry.sample_shape))


def raw_block(clf, pool: np.ndarray, batch: int, evaluations: int) -> float:
    """Seconds of plain session.run over ``evaluations`` inputs of the pool, in batches of ``batch``."""
    rt = clf.runtime
    feeds = []
    done = 0
    while done < evaluations:
        start = done % len(pool)
        size = min(batch, evaluations - done, len(pool) - start)
        feeds.append(pool[start : start + size])
        done += size
    began = time.perf_counter()
    for feed in feeds:
        rt.session.run([rt.output_name], {rt.input_name: feed})
    return time.perf_counter() - began


def raw_best_batch(clf, pool: np.ndarray) -> tuple[int, dict[int, float]]:
    """The raw side's best batch size over the pool: highest rate of each size's fastest pass
    (the minimum is the figure other processes on the machine disturb least)."""
    rates = {}
    for b in CANDIDATES:
        raw_block(clf, pool, b, len(pool))  # warm
        rates[b] = len(pool) / min(raw_block(clf, pool, b, len(pool)) for _ in range(5))
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
        print(f"model {name}: providers {clf.runtime.providers}, session {clf.runtime.session_options}")
        print(f"  search batch (tuned in {i} steps): {clf.tuner.chosen}")
        for t in (1, 2):
            pools = [raw_pool(clf, x, ref, t) for x, ref in inputs]
            best, rates = raw_best_batch(clf, pools[0])
            print(f"  t={t}: raw best batch {best} (raw evals/s of the fastest pass over the step's inputs, by batch: "
                  f"{', '.join(f'{b}: {r:,.0f}' for b, r in rates.items())})")
            s_time, r_time, s_min, r_min, total = 0.0, 0.0, math.inf, math.inf, 0
            s_cpu, r_cpu = 0.0, 0.0
            for step in range(args.steps):
                c0 = time.process_time()
                n, s_sec = search_step(clf, inputs, t, step)
                c1 = time.process_time()
                r_sec = raw_block(clf, pools[step % len(pools)], best, n)
                c2 = time.process_time()
                s_time, r_time, total = s_time + s_sec, r_time + r_sec, total + n
                s_cpu, r_cpu = s_cpu + c1 - c0, r_cpu + c2 - c1
                s_min, r_min = min(s_min, s_sec / n), min(r_min, r_sec / n)
            print(f"  t={t}: {args.steps} steps of {n} evaluations; wall: search {total / s_time:,.0f} evals/s, "
                  f"raw onnxruntime {total / r_time:,.0f} evals/s, ratio {r_time / s_time:.3f}; "
                  f"fastest step: search {1 / s_min:,.0f}, raw {1 / r_min:,.0f}, ratio {r_min / s_min:.3f}; "
                  f"CPU time (all threads): ratio {r_cpu / s_cpu:.3f}")


if __name__ == "__main__":
    main()
