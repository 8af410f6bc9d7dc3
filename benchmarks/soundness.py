"""The soundness harness at scale: l0tre's sound lower bounds against an independent oracle.

    python benchmarks/soundness.py --checks 10000 [--seed S] [--jobs 1]

Generates near-boundary tiny ONNX classifiers (``tests/nearboundary.py``), round-robin over the
families, runs ``l0tre_core.api.evaluate(..., lower="sound")`` on a few inputs of each, and checks
every certificate with ``tests/oracle.py`` (grid + MILP + float32 nudges, no code shared with the
certifier); every witness is re-run and recounted. A check is one (network, input, t), t = 1 ..
max_t. Prints the number of checks, sound certificates, how many of them the oracle checked (MILP
or grid only), unknowns, and FALSE certificates (must be 0), with one line per network family;
exit code 1 if any certificate is false (or any witness is bad).

``--network FAMILY:SEED`` reruns one network and prints its reproducers in full. ``--cones`` forces
the code paths of wide networks onto these tiny ones (convolutions bounded over each box's cone,
light ball bounds at t = 1, every undecided box through its own backward pass, ``certify/local.py``:
``test_soundness_harness.cone_paths``). ``--cover`` forces the covering
blocks at t >= 2, every block bounded however many pixels it frees (``cover_paths``). ``--arrays
strict|cupy`` bounds the boxes on another array device (``device_paths``): the strict stand-in for
CuPy on any machine, CuPy itself on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import nearboundary as nb  # noqa: E402
from test_soundness_harness import NetResult, check_network, make_host  # noqa: E402

FIELDS = ("checks", "sound", "checked_milp", "checked_grid", "refuted", "unknown", "unsupported", "false")


def _one(args: tuple[str, int, str, dict[str, Any]]) -> NetResult:
    family, seed, folder, kw = args
    host = _host()
    try:
        return check_network(family, seed, Path(folder) / f"{family}_{seed}", host=host, **kw)
    except Exception as exc:  # noqa: BLE001 - one broken network must not end the run
        res = NetResult(family, seed)
        res.note = f"harness error: {type(exc).__name__}: {exc}"
        return res


_HOST: Any = None


def _host() -> Any:
    global _HOST
    if _HOST is None:
        _HOST = make_host()
    return _HOST


def networks_for(checks: int, per_network: int, seed: int, families: list[str]) -> list[tuple[str, int]]:
    n = max(1, math.ceil(checks / per_network))
    return [(families[i % len(families)], seed + i // len(families)) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=10_000, help="at least this many (network, input, t) checks")
    ap.add_argument("--seed", type=int, default=0, help="first network seed")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--families", default=",".join(nb.FAMILIES), help="comma-separated families")
    ap.add_argument("--inputs", type=int, default=4, help="inputs per network")
    ap.add_argument("--max-t", type=int, default=2)
    ap.add_argument("--certify-time", type=float, default=1.0, help="l0tre's --certify-time")
    ap.add_argument("--input-time", type=float, default=2.0, help="l0tre's --input-time-limit")
    ap.add_argument("--out", type=Path, default=None, help="folder for reproducers (JSON) and the models of findings")
    ap.add_argument("--network", default=None, help="FAMILY:SEED: run one network and print its findings in full")
    ap.add_argument("--verbose", action="store_true", help="one line per network")
    ap.add_argument("--cones", action="store_true", help="force the wide networks' code paths: every Conv a ConvOp "
                    "(boxes bounded over their cones), light ball bounds at t = 1, the local backward pass")
    ap.add_argument("--cover", action="store_true", help="force the covering blocks at t >= 2, every block "
                    "bounded however large (blocks outside the ball the float32 terms were prepared for)")
    ap.add_argument("--arrays", choices=("strict", "cupy"), default=None, help="bound the boxes on another array "
                    "device: the strict stand-in for CuPy, or CuPy on a GPU (certify/arrays.py)")
    args = ap.parse_args(argv)

    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in nb.FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown} (known: {', '.join(nb.FAMILIES)})")
    kw = dict(n_inputs=args.inputs, max_t=args.max_t, certify_time=args.certify_time, input_time=args.input_time,
              cones=args.cones, cover=args.cover, arrays=args.arrays)
    work = Path(tempfile.mkdtemp(prefix="l0tre-soundness-"))
    if args.network:
        fam, seed = args.network.split(":")
        res = _one((fam, int(seed), str(work), kw))
        print(res.spec)
        print("  " + " ".join(f"{f}={getattr(res, f)}" for f in FIELDS) + (f"  note: {res.note}" if res.note else ""))
        for f in res.findings:
            print(f.reproducer())
        return 1 if res.findings else 0

    todo = networks_for(args.checks, args.inputs * args.max_t, args.seed, families)
    print(f"soundness harness: {len(todo)} networks x {args.inputs} inputs x t = 1..{args.max_t} "
          f"(>= {args.checks} checks), families {', '.join(families)}, seeds from {args.seed}, {args.jobs} job(s)", flush=True)
    started = time.perf_counter()
    results: list[NetResult] = []
    jobs = [(f, s, str(work), kw) for f, s in todo]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            it = pool.imap_unordered(_one, jobs)
            for res in it:
                results.append(res)
                _progress(res, results, len(todo), started, args.verbose)
    else:
        for job in jobs:
            res = _one(job)
            results.append(res)
            _progress(res, results, len(todo), started, args.verbose)
    elapsed = time.perf_counter() - started
    try:
        return _report(results, families, elapsed, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # every network is regenerated by --network FAMILY:SEED


def _progress(res: NetResult, results: list[NetResult], total: int, started: float, verbose: bool) -> None:
    for f in res.findings:
        print("  " + f.line(), flush=True)
    if res.note.startswith("harness error"):
        print(f"  {res.family}#{res.seed}: {res.note}", flush=True)
    if verbose:
        print(f"  {res.family}#{res.seed}: " + " ".join(f"{f}={getattr(res, f)}" for f in FIELDS)
              + f" {res.seconds:.1f}s", flush=True)
    n = len(results)
    if n % 50 == 0 or n == total:
        el = time.perf_counter() - started
        checks = sum(r.checks for r in results)
        print(f"[{n}/{total} networks, {checks} checks, {el:.0f}s, {60 * checks / max(el, 1e-9):.0f} checks/min, "
              f"false so far {sum(r.false for r in results)}]", flush=True)


def _report(results: list[NetResult], families: list[str], elapsed: float, out: Path | None) -> int:
    print()
    head = f"{'family':12s} {'nets':>5s} {'checks':>7s} {'sound':>6s} {'milp':>6s} {'grid':>6s} {'refuted':>7s} " \
           f"{'unknown':>7s} {'unsupp':>6s} {'FALSE':>6s} {'bad-w':>5s} {'l0tre s':>8s} {'oracle s':>8s}"
    print(head)
    for fam in families + ["total"]:
        rs = results if fam == "total" else [r for r in results if r.family == fam]
        if not rs:
            continue
        s = {f: sum(getattr(r, f) for r in rs) for f in FIELDS}
        bad_w = sum(1 for r in rs for f in r.findings if f.kind == "bad-witness")
        print(f"{fam:12s} {len(rs):5d} {s['checks']:7d} {s['sound']:6d} {s['checked_milp']:6d} {s['checked_grid']:6d} "
              f"{s['refuted']:7d} {s['unknown']:7d} {s['unsupported']:6d} {s['false']:6d} {bad_w:5d} "
              f"{sum(r.l0tre_seconds for r in rs):8.1f} {sum(r.oracle_seconds for r in rs):8.1f}")
    tot = {f: sum(getattr(r, f) for r in results) for f in FIELDS}
    errors = [r for r in results if r.note.startswith("harness error")]
    findings = [f for r in results for f in r.findings]
    print()
    print(f"checks run: {tot['checks']}")
    print(f"sound certificates issued: {tot['sound']}")
    print(f"checked against the oracle: {tot['checked_milp'] + tot['checked_grid']} "
          f"(MILP {tot['checked_milp']}, grid only {tot['checked_grid']}; the rest were contradicted by l0tre's own witness)")
    print(f"refuted (verified witness): {tot['refuted']}")
    print(f"unknown: {tot['unknown']} (+ {tot['unsupported']} where sound certification was refused for the model)")
    print(f"FALSE certificates: {tot['false']}")
    print(f"bad witnesses: {sum(1 for f in findings if f.kind == 'bad-witness')}")
    if errors:
        print(f"harness errors: {len(errors)} networks (not counted as checks)")
    print(f"time: {elapsed:.0f}s, {60 * tot['checks'] / max(elapsed, 1e-9):.0f} checks/min")
    if findings:
        print()
        print("findings (rerun one with --network FAMILY:SEED):")
        for f in findings:
            print("  " + f.line())
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(findings):
                name = f"{f.kind}_{f.family}_{f.seed}_{f.input}_t{f.t}"
                (out / f"{name}.json").write_text(json.dumps(asdict(f), indent=1), encoding="utf-8")
                if os.path.exists(f.model):
                    (out / f"{name}.onnx").write_bytes(Path(f.model).read_bytes())
            print(f"reproducers written to {out}")
        else:
            print("(--out DIR keeps the reproducers and their models)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
