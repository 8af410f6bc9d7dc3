"""Certification power on the model zoo (benchmarks/zoo/, scripts/zoo.py): one command.

    nice -n 5 python benchmarks/certify.py [--n 20] [--models NAME ...] [--out FILE.json]
    python benchmarks/certify.py --table FILE.json           # the Markdown table of a saved run
    python benchmarks/certify.py --table FILE.json --truth 120   # its undecided inputs again, 120 s each

For every zoo model and every t of its plan, the first ``--n`` held-out inputs the model classifies
correctly go through the engine as a user runs it (``l0tre robustness MODEL --data D --lower auto
--upper none --max-t t --input-time-limit L``, via ``l0tre_core.evaluate``): at t = 1 the discrete
sweep refutes first, the sound certifier proves the rest; every refutation is a witness verified in
onnxruntime. Per input, at level t:

- proven: the sound lower bound exceeds t (no change of at most t pixels flips the prediction,
  for the float32 network onnxruntime runs);
- refuted: a verified witness of at most t pixels;
- band: undecided because a margin stays inside the float32 error band (counted apart);
- unknown: neither within the time limit L.

Seconds are the engine's per-input time (all levels up to t, sweep and certificate). MNIST models
read t10k 8000+ (held out from training); the 3x32x32 ResNets read Fashion-MNIST test images
(benchmarks/zoo/fashion32_test_200.npz), with the normalisation from their model card.

``--truth S`` takes the inputs a saved run left undecided through the engine again with S seconds
each and adds them to the file: the covering search at t >= 2 is complete, so with the time it
says which of them are robust, the share a complete method shows, beside the rows' proven share.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"
MNIST_DATA = ROOT / "l0tre_core" / "demo" / "mnist_heldout_500.npz"  # t10k 8000-8499
FASHION_DATA = ZOO / "fashion32_test_200.npz"

# model -> [(t, seconds per input)]: the goals (t = 1 everywhere; t = 2 on the MNIST CNNs
# within 10 s; t = 3 on the MLPs within 10 s; ResNets: 30 s at t = 1)
PLAN: dict[str, list[tuple[int, float]]] = {
    "mnist_mlp": [(1, 10.0), (2, 10.0), (3, 10.0)],
    "mnist_mlp_pgd": [(1, 10.0), (2, 10.0), (3, 10.0)],
    "mnist_convsmall": [(1, 10.0), (2, 10.0)],
    "mnist_convsmall_pgd": [(1, 10.0), (2, 10.0)],
    "mnist_maxpool": [(1, 10.0), (2, 10.0)],
    "mnist_maxpool_pgd": [(1, 10.0), (2, 10.0)],
    "fmnist_resnet": [(1, 30.0)],
    "fmnist_resnet_pgd": [(1, 30.0)],
}


def status_at(state: object, t: int) -> str:
    if getattr(state, "lower_sound") > t:
        return "proven"
    upper = getattr(state, "upper")
    if upper is not None and upper <= t:
        return "refuted"
    if getattr(state, "float32_band") is not None:
        return "band"
    return "unknown"


def load(name: str) -> tuple[Any, Any]:
    """A zoo model and its data pool."""
    from l0tre_core import load_data, load_model

    clf = load_model(ZOO / f"{name}.onnx", device="cpu")
    data_path = FASHION_DATA if name.startswith("fmnist") else MNIST_DATA
    return clf, load_data(data_path, clf.geometry, tuple(clf.card.range))


def run(clf: Any, pool: Any, keep: np.ndarray, t: int, limit: float) -> tuple[list[str], list[float], float]:
    """The engine on the inputs ``keep`` of ``pool`` up to level ``t``, ``limit`` seconds each: each
    input's status at ``t``, its seconds, and the wall time."""
    from l0tre_core import Budget, Dataset, evaluate

    subset = Dataset(pool.x[keep], pool.y[keep], pool.index[keep], pool.source, pool.sample_shape, pool.layout)
    started = time.perf_counter()
    result = evaluate(clf, subset, budget=Budget(max_t=t, input_time_limit=limit, certify_time=limit),
                      lower="auto", upper=["none"], device="cpu")
    wall = time.perf_counter() - started
    return [status_at(s, t) for s in result.samples], [float(s.seconds) for s in result.samples], wall


def run_model(name: str, n: int, plan: list[tuple[int, float]]) -> list[dict[str, object]]:
    clf, pool = load(name)
    keep = np.flatnonzero(clf.predict(pool.x) == pool.y)[:n]
    rows = []
    for t, limit in plan:
        statuses, secs, wall = run(clf, pool, keep, t, limit)
        row = {"model": name, "t": t, "limit": limit, "n": len(statuses),
               "proven": statuses.count("proven"), "refuted": statuses.count("refuted"),
               "band": statuses.count("band"), "unknown": statuses.count("unknown"),
               "median_s": statistics.median(secs) if secs else None, "max_s": max(secs) if secs else None,
               "wall_s": wall, "inputs": [int(i) for i in pool.index[keep]], "statuses": statuses, "seconds": secs}
        print(f"{name} t={t}: {row['proven']} proven, {row['refuted']} refuted, {row['band']} band, "
              f"{row['unknown']} unknown of {row['n']}; median {row['median_s']:.2f} s, max {row['max_s']:.2f} s",
              flush=True)
        rows.append(row)
    return rows


def markdown(head: list[str], lines: list[list[object]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(str(v) for v in line) + " |" for line in lines])


def table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        n = int(r["n"])
        decided = 100.0 * (int(r["proven"]) + int(r["refuted"])) / n if n else 0.0
        lines.append([f"`{r['model']}`", r["t"], f"{r['limit']:.0f}", n, r["proven"], r["refuted"], r["band"],
                      r["unknown"], f"{decided:.0f}", f"{r['median_s']:.2f}", f"{r['max_s']:.2f}"])
    return markdown(["model", "t", "limit s", "n", "proven", "refuted", "band", "unknown", "decided %", "median s",
                     "max s"], lines)


def truth(rows: list[dict[str, Any]], limit: float) -> list[dict[str, Any]]:
    """The inputs a saved run left undecided (unknown or band), through the engine again with
    ``limit`` seconds each: the covering search is complete, so given the time it tells how many
    of them are robust at t, and what the rows' proven share leaves out."""
    out: list[dict[str, Any]] = []
    for r in rows:
        undecided = [int(i) for i, s in zip(r["inputs"], r["statuses"]) if s in ("unknown", "band")]
        if not undecided:
            continue
        clf, pool = load(str(r["model"]))
        keep = np.flatnonzero(np.isin(pool.index, undecided))
        statuses, secs, _ = run(clf, pool, keep, int(r["t"]), limit)
        row = {"model": r["model"], "t": r["t"], "limit": limit, "inputs": [int(i) for i in pool.index[keep]],
               "statuses": statuses, "seconds": secs}
        print(f"{r['model']} t={r['t']}, {len(keep)} undecided at {r['limit']:.0f} s, with {limit:.0f} s: "
              + ", ".join(f"{s} {x:.1f} s" for s, x in zip(statuses, secs)), flush=True)
        out.append(row)
    return out


def truth_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        st: list[str] = r["statuses"]
        lines.append([f"`{r['model']}`", r["t"], f"{r['limit']:.0f}", len(st), st.count("proven"), st.count("refuted"),
                      st.count("band"), st.count("unknown"), ", ".join(f"{x:.1f}" for x in r["seconds"])])
    return markdown(["model", "t", "limit s", "undecided before", "proven", "refuted", "band", "unknown",
                     "seconds each"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="correctly classified inputs per model")
    parser.add_argument("--models", nargs="*", choices=list(PLAN), help="only these models")
    parser.add_argument("--t", type=int, nargs="*", help="only these t")
    parser.add_argument("--out", type=Path, help="save the rows as JSON")
    parser.add_argument("--table", type=Path, help="print the table of a saved run and exit")
    parser.add_argument("--truth", type=float, metavar="SECONDS",
                        help="with --table: run the saved run's undecided inputs again, SECONDS each")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        if args.truth is None:
            print(table(saved["rows"]))
            if saved.get("truth"):
                print("\n" + truth_table(saved["truth"]))
            return
        saved["truth"] = truth(saved["rows"], args.truth)
        print(truth_table(saved["truth"]))
        args.table.write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")
        return
    rows: list[dict[str, object]] = []
    for name in args.models or list(PLAN):
        plan = [(t, lim) for t, lim in PLAN[name] if not args.t or t in args.t]
        if plan:
            rows += run_model(name, args.n, plan)
    print(table(rows))
    if args.out:
        meta = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
                "python": platform.python_version()}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
