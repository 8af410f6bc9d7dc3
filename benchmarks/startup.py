"""Start-up outside the search, for a one-input run: ``l0tre robustness --n 1 --lower discrete``.

Runs the command REPEATS times as a fresh process (as a user would) and reports, per run, the
wall time, the search's own seconds (the input's ``seconds`` in the JSON result) and what is left:
the start-up outside the search (interpreter, imports, plugin discovery, model load, data load,
writing the result). The model's load and check (onnxruntime session, card resolution, the
batch-rewrite check of a fixed-batch model) is timed separately, in-process, for the same model.

    python benchmarks/startup.py [--repeats 5] [--model MODEL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "l0tre_cli", "robustness"] + ([args.model] if args.model else []) + [
        "--n", "1", "--lower", "discrete", "--format", "json", "-q"]
    walls, searches = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        walls.append(time.perf_counter() - start)
        searches.append(sum(s["seconds"] for s in json.loads(out)["samples"]))
    outside = [w - s for w, s in zip(walls, searches)]
    from l0tre_core import load_model

    loads = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        load_model(args.model)
        loads.append(time.perf_counter() - start)
    med = statistics.median
    print(f"{' '.join(cmd[2:])}: wall {med(walls):.2f} s, search {med(searches):.2f} s, "
          f"outside the search {med(outside):.2f} s (median of {args.repeats}; min {min(outside):.2f}); "
          f"model load and check, in-process: {med(loads):.3f} s")


if __name__ == "__main__":
    main()
