"""How much the random search shrinks L0-TRE's adversarial examples, on the demo model (or MODEL).

For N inputs: (a) L0-TRE's t = 1 sensitivity sweep, cumulative union and tightening alone; (b) the
same followed by the random search (``l0tre attack``'s pipeline) at each budget; optionally (c) the
random search alone, from nothing (random sparse changes, k doubling to --k-max). Prints mean and
median L0, success at L0 <= 4 / 8 / 16, evaluations and seconds per input, side by side in one run.
Every example counted is verified by re-running it through the model.

    python benchmarks/attack_demo.py [--n 50] [--budgets 1000,5000] [--model MODEL --data DATA] [--scratch]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from l0tre_attack.random_search import RandomSearch, UnitPrior
from l0tre_core.witness import Witness
from l0tre_core.data import load_data
from l0tre_core.model import load_model
from l0tre_core.host import create_host
from l0tre_core.sweep import SearchContext
from l0tre_core.tensors import NumpyKernels
from l0tre_core.threat import ThreatModel


def sensitivity(ctx: SearchContext) -> tuple[Witness | None, int, object]:
    sens = ctx.sweep(1, None)
    if sens.flip is not None:
        return Witness.between(ctx.x_units, sens.flip.apply(ctx.x_units)), 1, sens
    union = ctx.cumulative_union(sens) if len(sens.subsets) else None
    w = None if union is None else ctx.tighten(union)
    return (w if w is not None and ctx.verify(w) else None), (2 if sens.complete else 1), sens


def row(name: str, sizes: list[float], evals: list[int], seconds: list[float]) -> str:
    l0 = np.array(sizes, float)
    ok = l0[np.isfinite(l0)]
    med = np.median(l0)
    at = "  ".join(f"{100 * np.mean(l0 <= k):5.1f}%" for k in (4, 8, 16))
    return (f"{name:<34} {ok.mean() if len(ok) else float('nan'):8.2f} {med:7.1f} {len(ok):>4}/{len(l0):<4} {at}"
            f" {np.mean(evals):10,.0f} {np.mean(seconds):8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--budgets", default="1000,5000", help="random-search evaluations per input, comma-separated")
    parser.add_argument("--k-max", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", action="store_true", help="also run the random search alone, from nothing")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",") if b]

    host = create_host()
    clf = load_model(args.model, host=host, device="cpu")
    data = load_data(args.data, clf.geometry, clf.card.range, host=host, n=args.n, start=args.start)
    threat = ThreatModel(lo=clf.card.lo, hi=clf.card.hi)
    preds = clf.predict(data.x)
    kernels = NumpyKernels()

    base: list[float] = []
    base_ev: list[int] = []
    base_s: list[float] = []
    rs = {b: ([], [], []) for b in budgets}  # sizes, evaluations, seconds (sensitivity included)
    scratch: tuple[list[float], list[int], list[float]] = ([], [], [])
    for pos in range(len(data)):
        index = int(data.index[pos])
        ctx = SearchContext(clf, kernels, threat, data.x[pos], int(preds[pos]), 4096)
        ev0, t0 = clf.evaluations, time.perf_counter()
        w, lower, sens = sensitivity(ctx)
        ev_s, sec_s = clf.evaluations - ev0, time.perf_counter() - t0
        base.append(np.inf if w is None else w.size)
        base_ev.append(ev_s)
        base_s.append(sec_s)
        prior = UnitPrior.from_sensitivity(sens, ctx.encoder.n_units, ctx.values)
        for b in budgets:
            ev0, t0 = clf.evaluations, time.perf_counter()
            best = w
            if w is None or w.size > lower:
                out = RandomSearch(queries=b, k_cap=args.k_max).search(
                    ctx, w, np.random.default_rng([args.seed, index]), lower=lower, prior=prior)
                if out.witness is not None:
                    assert ctx.verify(out.witness) and (w is None or out.witness.size < w.size)
                    best = out.witness
            sizes, evs, secs = rs[b]
            sizes.append(np.inf if best is None else best.size)
            evs.append(ev_s + clf.evaluations - ev0)
            secs.append(sec_s + time.perf_counter() - t0)
        if args.scratch:
            b = max(budgets)
            ev0, t0 = clf.evaluations, time.perf_counter()
            out = RandomSearch(queries=b, k_cap=args.k_max).search(ctx, None, np.random.default_rng([args.seed, index]))
            scratch[0].append(np.inf if out.witness is None else out.witness.size)
            scratch[1].append(clf.evaluations - ev0)
            scratch[2].append(time.perf_counter() - t0)

    print(f"model {clf.path}  inputs {len(data)} (from {args.start})  pixels {clf.geometry.n_pixels}  "
          f"values {len(ctx.values)}  seed {args.seed}")
    print(f"{'method':<34} {'mean L0':>8} {'median':>7} {'found':>9} {'<=4':>6} {'<=8':>7} {'<=16':>7} {'evals/in':>10} {'s/in':>8}")
    print(row("(a) sensitivity union + tighten", base, base_ev, base_s))
    for b in budgets:
        print(row(f"(b) + random search {b:,}", *rs[b]))
    if args.scratch:
        print(row(f"(c) random search alone {max(budgets):,}", *scratch))
    print("mean L0 over the inputs with an example; median counts inputs without one as infinite")


if __name__ == "__main__":
    main()
