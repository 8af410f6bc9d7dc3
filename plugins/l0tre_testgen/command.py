"""The ``testgen`` command: adversarial test cases from the L0-TRE search, with a summary of the
set (inputs covered, L0 distances, new labels) and its neuron coverage.

With ``--out``: ``tests.npz`` and ``results.json`` (the result document: one sample per input,
every test case under ``cases``, the coverage under ``coverage``)."""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table
from typing_extensions import Annotated

from l0tre_cli.kit import Common, InputProgress, common_options, console, search_options
from l0tre_core import (
    Budget,
    SearchContext,
    ThreatModel,
    UsageError,
    atomic_write,
    checked_result,
    pick_kernels,
    result_document,
    write_result_json,
)
from l0tre_testgen.coverage import coverage_report
from l0tre_testgen.generate import TestCase, generate

PANEL = "Test generation"


@common_options(without=("seed",))
@search_options(panel=PANEL)
def testgen(
    common: Common,
    *,
    max_t: int,
    time_limit: Optional[float],
    input_time_limit: Optional[float],
    values: str,
    score: str,
    per_input: Annotated[int, typer.Option("--per-input", help="Most test cases kept per input", rich_help_panel=PANEL)] = 4,
    coverage: Annotated[bool, typer.Option("--coverage/--no-coverage", help="Measure ReLU neuron coverage of the clean and generated sets", rich_help_panel=PANEL)] = True,
) -> None:
    budget = Budget(max_t=max_t, time_limit=time_limit, input_time_limit=input_time_limit)  # validates them
    if per_input < 1:
        raise UsageError(f"--per-input must be positive, got {per_input}")
    model = common.load_model()
    threat = ThreatModel(lo=model.card.lo, hi=model.card.hi, unit="pixel", values=values, score=score)
    data = common.load_data(model)
    out = common.prepare_out()
    host = common.host
    kernels = pick_kernels(host, common.device)
    refs = model.predict(data.x)
    started = time.monotonic()
    run_deadline = None if time_limit is None else started + time_limit
    per: list[tuple[int, list[TestCase], float]] = []  # (position, cases, seconds)
    with InputProgress("testgen", len(data), quiet=common.quiet) as steps:
        for pos in range(len(data)):
            t0 = time.monotonic()
            if run_deadline is not None and t0 > run_deadline:
                break  # the inputs not reached get no cases
            deadline = None if input_time_limit is None else t0 + input_time_limit
            if run_deadline is not None:
                deadline = run_deadline if deadline is None else min(deadline, run_deadline)
            ctx = SearchContext(model, kernels, threat, data.x[pos], int(refs[pos]), budget.chunk)
            per.append((pos, generate(ctx, max_t, per_input, deadline), time.monotonic() - t0))
            steps.update(steps.done + 1)
    adv = _adversarial_images(data, per)
    measured = coverage_report(model, data.x, adv) if coverage else None
    report = checked_result(_report(model, data, refs, threat, per, max_t, per_input, time.monotonic() - started, measured))
    if common.format == "json":
        console.print_json(report)
    else:
        _print(report)
    if out is not None:
        _write_files(out, model, data, refs, per, adv, report)
        if not common.quiet:
            console.err.print(f"test cases written to {out}")


def _adversarial_images(data: Any, per: list[tuple[int, list[TestCase], float]]) -> np.ndarray:
    """Every test case as a canonical data-space image ``[M, P, C]``, in report order."""
    images = [c.witness.apply(data.x[pos]) for pos, cases, _ in per for c in cases]
    return np.stack(images) if images else np.zeros((0, *data.x.shape[1:]), np.float32)


def _report(model: Any, data: Any, refs: np.ndarray, threat: ThreatModel, per: list[tuple[int, list[TestCase], float]],
            max_t: int, per_input: int, seconds: float, coverage: dict[str, Any] | None) -> dict[str, Any]:
    """The result document: one sample per input; ``cases`` (every test case), ``coverage``."""
    inputs, cases = [], []
    for pos, found, secs in per:
        index = int(data.index[pos])
        label = None if data.y is None else int(data.y[pos])
        inputs.append({"index": index, "label": label, "reference": int(refs[pos]), "cases": len(found),
                       "l0": [c.l0 for c in found], "new_labels": [c.label_new for c in found], "seconds": round(secs, 4)})
        for c in found:
            cases.append({"index": index, "label_clean": int(refs[pos]), "label_new": c.label_new, "l0": c.l0,
                          "level": c.level, "source": c.source, "pixels": c.witness.units.tolist()})
    l0s = Counter(c["l0"] for c in cases)
    news = Counter(f"{c['label_clean']}->{c['label_new']}" for c in cases)
    extras: dict[str, Any] = {} if coverage is None else {"coverage": coverage}
    return result_document(
        "testgen",
        model=model.describe(),
        threat=threat.to_dict(),
        data={"source": data.source, "inputs": len(data), "first_index": int(data.index[0]) if len(data) else None},
        max_t=max_t,
        per_input=per_input,
        seconds=round(seconds, 3),
        summary={
            "inputs": len(per),
            "inputs_with_cases": sum(1 for _, found, _ in per if found),
            "cases": len(cases),
            "l0_distribution": {str(k): l0s[k] for k in sorted(l0s)},
            "new_labels": sorted({c["label_new"] for c in cases}),
            "transitions": {k: news[k] for k in sorted(news)},
            "seconds": round(seconds, 3),
        },
        cases=cases,
        **extras,
        samples=inputs,
    )


def _print(report: dict[str, Any]) -> None:
    table = Table(show_edge=False, title=f"adversarial test cases (levels t = 1..{report['max_t']}, up to {report['per_input']} per input)")
    for col in ("index", "label", "pred", "cases", "L0", "new labels", "seconds"):
        table.add_column(col, justify="right")
    for r in report["samples"]:
        table.add_row(str(r["index"]), "-" if r["label"] is None else str(r["label"]), str(r["reference"]), str(r["cases"]),
                      ",".join(map(str, r["l0"])) or "-", ",".join(map(str, r["new_labels"])) or "-", f"{r['seconds']:.2f}")
    console.out.print(table)
    s = report["summary"]
    dist = ", ".join(f"L0={k}: {v}" for k, v in s["l0_distribution"].items()) or "none"
    moves = ", ".join(f"{k} ({v})" for k, v in s["transitions"].items()) or "none"
    console.out.print(f"{s['inputs_with_cases']}/{s['inputs']} inputs yielded test cases; {s['cases']} cases; {s['seconds']:.1f}s")
    console.out.print(f"L0 distances: {dist}")
    console.out.print(f"new labels reached: {', '.join(map(str, s['new_labels'])) or 'none'}; label changes: {moves}")
    cov = report.get("coverage")
    if cov is not None:
        if cov["available"]:
            console.out.print(
                f"neuron coverage ({cov['neurons']:,} ReLU neurons in {cov['relu_layers']} layers, active > 0): "
                f"clean {cov['clean']:.2%}, generated {cov['generated']:.2%}, clean + generated {cov['combined']:.2%}"
            )
        else:
            console.out.print(f"neuron coverage not measured: {cov['reason']}")


def _write_files(out: Path, model: Any, data: Any, refs: np.ndarray, per: list[tuple[int, list[TestCase], float]],
                 adv: np.ndarray, report: dict[str, Any]) -> None:
    cases = [(pos, c) for pos, found, _ in per for c in found]
    arrays = {
        "index": np.array([int(data.index[pos]) for pos, _ in cases], np.int64),
        "x": data.to_file_layout(adv, model.geometry).astype(np.float32) if len(adv) else np.zeros((0, *data.sample_shape), np.float32),
        "label_clean": np.array([int(refs[pos]) for pos, _ in cases], np.int64),
        "label_new": np.array([c.label_new for _, c in cases], np.int64),
        "l0": np.array([c.l0 for _, c in cases], np.int64),
        "level": np.array([c.level for _, c in cases], np.int64),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(out / "tests.npz", lambda fh: fh.write(buf.getvalue()), binary=True)
    write_result_json(out, report)

