"""The ``design`` command: global robustness of several models on the same inputs with the same
budget, ranked, and the comparisons their bounds prove.

With ``--out``: ``results.json`` (the result document: ``models`` lists the models compared, the
ranking is in ``summary``, the proven comparisons in ``claims``, each input's bounds per model in
``samples``) and ``design.png``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table
from typing_extensions import Annotated

from l0tre_cli.kit import SEARCH_PANEL, Common, InputProgress, common_options, console, search_options
from l0tre_core import (
    Budget,
    DataError,
    RunResult,
    ThreatModel,
    UsageError,
    atomic_write,
    checked_result,
    evaluate,
    result_document,
    write_result_json,
)
from l0tre_design.compare import ModelBounds, certified_share, claims, global_guarantee, rank
from l0tre_design.figure import design_png

PANEL = SEARCH_PANEL
RANKING = "by global lower bound (proven), then the share of inputs proven at each t (highest t first), then global upper bound"


@common_options
@search_options(panel=PANEL)
def design(
    common: Common,
    others: Annotated[Optional[list[Path]], typer.Argument(help="The other ONNX models to compare with MODEL (card options apply to all)", metavar="OTHERS...", show_default=False)] = None,
    *,
    max_t: int,
    time_limit: Optional[float],
    input_time_limit: Optional[float],
    values: str,
    score: str,
    lower: Annotated[str, typer.Option("--lower", metavar="METHOD", help="Lower bounds: auto, sound, discrete or both", rich_help_panel=PANEL)] = "auto",
    upper: Annotated[Optional[list[str]], typer.Option("--upper", help="Extra upper-bound searches (repeatable; 'none' for none)", rich_help_panel=PANEL, show_default="every installed one")] = None,
) -> None:
    budget = Budget(max_t=max_t, time_limit=time_limit, input_time_limit=input_time_limit)
    paths: list[Path | None] = [common.model, *(others or [])]
    if len(paths) < 2:
        raise UsageError("design compares models: give at least two (l0tre design MODEL_A MODEL_B ...)")
    executor = common.open_executor()  # a missing Ray is an environment error before any work
    models = [dataclasses.replace(common, model=p).load_model() for p in paths]
    names = _names(models)
    datasets = [common.load_data(m) for m in models]
    _check_same_inputs(models, datasets, names)
    data = datasets[0]
    lo, hi = models[0].card.range
    # every model gets the same threat model, budget, seed and inputs
    threat = ThreatModel(lo=lo, hi=hi, unit="pixel", values=values, score=score)
    out = common.prepare_out()  # before the long part: a bad --out fails at once
    rows: list[dict[str, Any]] = []
    results: list[RunResult] = []
    started = time.monotonic()
    with executor:
        for k, (name, model) in enumerate(zip(names, models), 1):
            with InputProgress(f"model {k}/{len(models)} {name}", len(data), quiet=common.quiet) as progress:
                result = evaluate(model, datasets[k - 1], threat=threat, budget=budget, lower=lower,
                                  device=common.device, seed=common.seed, host=common.host, listeners=[progress],
                                  upper=upper, executor=executor)
            rows.append(_row(name, model, datasets[k - 1], result))
            results.append(result)
    bounds = {r["name"]: ModelBounds(r["name"], r["lower"], r["upper"], r["guarantee"],
                                     tuple(s.lower for s in res.samples), tuple(s.upper for s in res.samples), max_t)
              for r, res in zip(rows, results)}
    for r in rows:
        r["certified_share"] = certified_share(bounds[r["name"]], max_t)  # proven robust at t = 1..max_t
    ranked = rank(bounds.values())
    verdicts = claims(ranked)
    order = {m.name: i for i, m in enumerate(ranked, 1)}
    for r in rows:
        r["rank"] = order[r["name"]]
    rows.sort(key=lambda r: r["rank"])
    report = checked_result(result_document(
        "design",
        models=[{"name": name, **model.describe()} for name, model in zip(names, models)],
        threat=threat.to_dict(),
        data={"source": data.source, "inputs": len(data), "first_index": int(data.index[0])},
        budget={"max_t": max_t, "time_limit_per_model": time_limit, "input_time_limit": input_time_limit, "lower": lower},
        seed=common.seed,
        seconds=round(time.monotonic() - started, 3),
        claims=[dataclasses.asdict(v) for v in verdicts],
        summary={"inputs": len(data), "ranked_by": RANKING, "ranking": rows},
        samples=_samples(data, names, results),
    ))
    if common.format == "json":
        console.print_json(report)
    else:
        _print(report)
    if out is not None:
        _write_files(out, report, [bounds[r["name"]] for r in rows])
        if not common.quiet:
            console.err.print(f"design comparison written to {out}")


def _names(models: list[Any]) -> list[str]:
    """Short names (file stems), made unique by their position when two stems are the same."""
    stems = [Path(m.path).stem if m.path else "model" for m in models]
    return [s if stems.count(s) == 1 else f"{s}#{i}" for i, s in enumerate(stems, 1)]


def _check_same_inputs(models: list[Any], datasets: list[Any], names: list[str]) -> None:
    """A comparison means something only on the same inputs in the same valid range."""
    first, x0 = models[0], datasets[0].x
    for model, data, name in zip(models[1:], datasets[1:], names[1:]):
        if tuple(model.card.range) != tuple(first.card.range):
            raise UsageError(f"{name} has valid range {model.card.range}, {names[0]} has {first.card.range}; "
                             "models compared must share one threat model")
        if data.x.shape != x0.shape or not np.array_equal(data.x, x0):
            raise DataError(f"{name} does not take the same inputs as {names[0]} "
                            f"({model.geometry.n_pixels} pixels x {model.geometry.n_channels} channels vs "
                            f"{first.geometry.n_pixels} x {first.geometry.n_channels})")


def _samples(data: Any, names: list[str], results: list[RunResult]) -> list[dict[str, Any]]:
    """Per input: its bounds under every model (by name)."""
    samples = []
    for pos in range(len(data)):
        per_model = {}
        for name, result in zip(names, results):
            s = result.samples[pos]
            per_model[name] = {"reference": s.reference, "lower": s.lower, "upper": s.upper, "guarantee": s.guarantee}
        samples.append({"index": int(data.index[pos]), "label": None if data.y is None else int(data.y[pos]),
                        "models": per_model})
    return samples


def _row(name: str, model: Any, data: Any, result: RunResult) -> dict[str, Any]:
    accuracy = None
    if data.y is not None:
        accuracy = float(np.mean(model.predict(data.x) == data.y))
    per_input = [s.guarantee for s in result.samples]
    return {
        "name": name,
        "path": str(model.path) if model.path else None,
        "accuracy": accuracy,
        "lower": result.global_lower,
        "upper": result.global_upper,
        "guarantee": global_guarantee(per_input),
        "guarantees": sorted(set(per_input)),
        "exact": sum(s.exact for s in result.samples),
        "inputs": len(result.samples),
        "complete": result.complete,
        "seconds": round(result.seconds, 3),
    }


def _print(report: dict[str, Any]) -> None:
    n = report["summary"]["inputs"]
    table = Table(show_edge=False, title=f"global robustness on the same {n} inputs (mean pixels that must change)")
    for col in ("rank", "model", "accuracy", "lower", "guarantee", "upper", "proven at t=1..", "exact", "seconds"):
        table.add_column(col, justify="left" if col in ("model", "guarantee", "proven at t=1..") else "right")
    for r in report["summary"]["ranking"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        up = "?" if r["upper"] is None else f"{r['upper']:.3f}"
        shares = " / ".join(f"{v:.0%}" for v in r["certified_share"])
        table.add_row(str(r["rank"]), r["name"], acc, f"{r['lower']:.3f}", r["guarantee"], up, shares,
                      f"{r['exact']}/{r['inputs']}", f"{r['seconds']:.1f}")
    console.out.print(table)
    console.out.print(f"ranked {report['summary']['ranked_by']}; accuracy is on these inputs only")
    for c in report["claims"]:
        console.out.print(c["text"])



def _write_files(out: Path, report: dict[str, Any], ordered: list[ModelBounds]) -> None:
    write_result_json(out, report)
    png = design_png(ordered, inputs=report["summary"]["inputs"])
    atomic_write(out / "design.png", lambda fh: fh.write(png), binary=True)
