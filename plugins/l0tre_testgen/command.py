"""The ``testgen`` command: test cases for a classifier, in two parts.

1. **Adversarial cases** from the L0-TRE search (levels t = 1..``--max-t``: the flipping
   assignment a sweep found and the tightened union of its ranked subsets; then cases targeted at
   each other class), up to ``--per-input`` per input, each verified to change the label.
2. **Coverage-guided tests** (DeepConcolic's case study, with L0-TRE's sensitivity): for each
   target of ``--criterion`` (NC or NBC over the ReLU pre-activations) not yet covered, the
   input's pixels are changed, most effective on that target first, until it is covered or
   ``--max-l0`` pixels are spent; every input that covers something new is kept. Every input
   starts from the same coverage (clean inputs and adversarial cases), so inputs run on any
   executor in any order; their tests are merged in input order, each kept only if it covers
   something the tests before it did not.

Every test is re-run through onnxruntime at the end: its changed pixels recounted (within its
budget), its label and its coverage recomputed; a test that does not hold is dropped.

With ``--out``: ``tests.npz`` (every test), ``testgen.json`` (the manifest: source input, L0,
targets newly covered, label before and after), ``coverage.png`` (coverage against L0) and
``results.json`` (the result document)."""

from __future__ import annotations

import io
import json
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
    ClassifierRecipe,
    ThreatModel,
    UsageError,
    WorkersLost,
    atomic_write,
    checked_result,
    load_data,
    pick_kernels,
    result_document,
    write_result_json,
)
from l0tre_testgen.coverage import CoverageProbe
from l0tre_testgen.criteria import CRITERIA, Criterion, nbc_criterion
from l0tre_testgen.generate import TestCase
from l0tre_testgen.guided import Generator, InputRecord
from l0tre_testgen.tasks import CasesTask, CasesWorker, CoverageTask, CoverageWorker, merge_in_order
from l0tre_testgen.verify import GeneratedTest, coverage_curve, verify_tests

PANEL = "Test generation"
REPORTED_L0 = (3, 8, 20)  # the budgets the paper reports coverage at


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
    per_input: Annotated[int, typer.Option("--per-input", help="Most adversarial cases kept per input", rich_help_panel=PANEL)] = 4,
    coverage: Annotated[bool, typer.Option("--coverage/--no-coverage", help="Measure coverage and generate tests to raise it", rich_help_panel=PANEL)] = True,
    criterion: Annotated[str, typer.Option("--criterion", help="Coverage criterion: nc (neuron coverage: pre-activation above --threshold) or nbc (neuron boundary coverage: outside the range seen on --calibration)", rich_help_panel=PANEL)] = "nc",
    threshold: Annotated[float, typer.Option("--threshold", help="NC: a neuron is covered when its pre-activation exceeds this", rich_help_panel=PANEL)] = 0.0,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="NBC: the data whose per-neuron range defines the boundaries", rich_help_panel=PANEL, show_default="the data's inputs not being evaluated")] = None,
    max_l0: Annotated[int, typer.Option("--max-l0", help="Most pixels a coverage-guided test may change (0: none generated)", rich_help_panel=PANEL)] = 20,
    max_targets: Annotated[int, typer.Option("--max-targets", help="Uncovered targets tried per input, closest to covered first", rich_help_panel=PANEL)] = 4096,
) -> None:
    budget = Budget(max_t=max_t, time_limit=time_limit, input_time_limit=input_time_limit)  # validates them
    if per_input < 1:
        raise UsageError(f"--per-input must be positive, got {per_input}")
    if criterion not in CRITERIA:
        raise UsageError(f"--criterion must be nc or nbc, got {criterion!r}")
    if max_l0 < 0:
        raise UsageError(f"--max-l0 must be >= 0, got {max_l0}")
    if max_targets < 1:
        raise UsageError(f"--max-targets must be positive, got {max_targets}")
    if calibration is not None and criterion != "nbc":
        raise UsageError("--calibration is for --criterion nbc (NC needs no calibration set)")
    executor = common.open_executor()  # a missing Ray is an environment error before any work
    model = common.load_model()
    threat = ThreatModel(lo=model.card.lo, hi=model.card.hi, unit="pixel", values=values, score=score)
    data = common.load_data(model)
    out = common.prepare_out()
    calib = _calibration(common, model, data, calibration) if coverage and criterion == "nbc" else None  # refused now, not after the search
    kernels = pick_kernels(common.host, common.device)
    refs = model.predict(data.x)
    recipe = ClassifierRecipe.of(model, common.host, common.device) if executor.name != "local" else None
    started = time.monotonic()
    run_deadline = None if time_limit is None else started + time_limit

    def left(pos: int) -> float | tuple[()] | None:
        """An input's item: seconds left of the run's time limit (() for none); None once it is
        up (the inputs not reached get nothing)."""
        if run_deadline is None:
            return ()
        remaining = run_deadline - time.monotonic()
        return None if remaining < 0 else remaining

    with executor:
        task = CasesTask(recipe, threat, data.x, refs, max_t, per_input, budget.chunk, input_time_limit, common.device)
        found: dict[int, tuple[list[TestCase], float]] = {}
        lost: WorkersLost | None = None  # the cluster, lost: what was finished is written, then exit code 4
        with InputProgress("testgen: adversarial cases", len(data), quiet=common.quiet) as steps:
            try:
                for pos, done in executor.map(task if recipe is not None else None, range(len(data)), left,
                                              _no_events, local=CasesWorker(model, kernels, task, run_deadline)):
                    found[pos] = done
                    steps.update(len(found))
            except WorkersLost as exc:
                lost = exc
        per = [(pos, *found[pos]) for pos in sorted(found)]  # input order, whichever executor
        tests = [GeneratedTest(pos, "adversarial", c.witness.units, c.witness.values, int(refs[pos]), c.label_new,
                               level=c.level, source=c.source) for pos, cases, _ in per for c in cases]
        cov: dict[str, Any] | None = None
        if coverage and lost is None:
            cov, tests, lost = _coverage_part(common, executor, recipe, model, data, refs, threat, tests, criterion,
                                              threshold, calib, max_l0, max_targets, input_time_limit, run_deadline,
                                              left)
    report = checked_result(_report(model, data, refs, threat, per, tests, max_t, per_input, max_l0,
                                     time.monotonic() - started, cov, complete=lost is None))
    if common.format == "json":
        console.print_json(report)
    else:
        _print(report)
    if out is not None:
        _write_files(out, model, data, tests, report)
        if not common.quiet:
            console.err.print(f"test cases written to {out}")
    if lost is not None:
        raise WorkersLost(f"{lost}; the tests of the inputs finished are in the results")


def _no_events(pos: int, event: Any) -> None:
    """testgen's per-input work streams no events: each input's result comes back whole."""


def _coverage_part(common: Common, executor: Any, recipe: ClassifierRecipe | None, model: Any, data: Any, refs: np.ndarray,
                   threat: ThreatModel, tests: list[GeneratedTest], criterion: str, threshold: float,
                   calib: tuple[np.ndarray, dict[str, Any]] | None, max_l0: int, max_targets: int,
                   input_time_limit: float | None, run_deadline: float | None,
                   left: Any) -> tuple[dict[str, Any] | None, list[GeneratedTest], WorkersLost | None]:
    """Coverage of the clean inputs, tests generated to raise it, every test verified; the
    coverage document (``available: false`` with a reason where it cannot be measured).

    Every input's tests are generated against the same coverage (the clean inputs and the
    adversarial cases), so inputs can run anywhere and in any order; their tests are merged in
    input order, each kept only if it covers something the tests before it did not. When the
    cluster is lost, the tests of the inputs finished are verified and kept, and the loss returned."""
    onnx_model = getattr(model, "onnx_model", None)
    if onnx_model is None:
        return {"available": False, "reason": "the backend does not expose an ONNX graph"}, tests, None
    try:
        probe = CoverageProbe.from_onnx(onnx_model, model.runtime.input_name)
    except Exception as exc:  # a graph onnxruntime cannot run with extra outputs: report, don't fail
        return {"available": False, "reason": f"cannot add the Relu tensors to the graph: {type(exc).__name__}: {exc}"}, tests, None
    if probe is None:
        return {"available": False, "reason": "the model has no Relu nodes"}, tests, None
    layers = probe.layer_sizes(np.asarray(model.model_input(data.x[:1])))
    neurons = sum(size for _, size in layers)
    if criterion == "nc":
        crit = Criterion("nc", neurons, threshold=threshold)
    else:
        x, where = calib  # type: ignore[misc]
        crit = nbc_criterion(probe.pre_activations(np.asarray(model.model_input(x))), where)
    values = threat.value_set(model.geometry.n_channels)
    gen = Generator(model, probe, crit, values, max_l0, max_targets)
    clean_cov = crit.covered(gen.pre(data.x)).any(axis=0)
    covered = clean_cov.copy()
    if tests:  # the adversarial cases count before the guided ones
        adv_images = np.stack([t.image(data.x) for t in tests])
        covered |= crit.covered(gen.pre(adv_images)).any(axis=0)
    task = CoverageTask(recipe, crit, values, max_l0, max_targets, data.x, covered, input_time_limit)
    found: dict[int, InputRecord] = {}
    lost: WorkersLost | None = None
    with InputProgress(f"testgen: {criterion.upper()} coverage-guided", len(data), quiet=common.quiet) as steps:
        try:
            for pos, rec in executor.map(task if recipe is not None else None, range(len(data)), left, _no_events,
                                         local=CoverageWorker(gen, task, run_deadline)):
                found[pos] = rec
                steps.update(len(found))
        except WorkersLost as exc:
            lost = exc
    records = [found[pos] for pos in sorted(found)]
    merged, duplicates = merge_in_order(found, covered)
    for pos, t in merged:
        tests.append(GeneratedTest(pos, "coverage", t.units, t.values, int(refs[pos]), t.label_after,
                                   target=int(t.target), target_name=crit.target_name(t.target, layers)))
    kept, dropped = verify_tests(gen, data.x, clean_cov, tests, max_l0)
    masks = np.stack([t.covers for t in kept]) if kept else np.zeros((0, crit.targets), bool)
    curve = coverage_curve(clean_cov, masks, np.array([t.l0 for t in kept], np.int64), max(max_l0, max(REPORTED_L0)))
    combined = clean_cov | masks.any(axis=0) if len(masks) else clean_cov
    doc = {
        "available": True,
        "criterion": crit.name,
        "definition": crit.describe(),
        "neurons": neurons,
        "relu_layers": len(layers),
        "targets": crit.targets,
        "clean": float(clean_cov.mean()),
        "generated": float(masks.any(axis=0).mean()) if len(masks) else 0.0,
        "combined": float(combined.mean()),
        "max_l0": max_l0,
        "curve": curve,
        "at": {str(k): curve[k]["coverage"] for k in REPORTED_L0 if k < len(curve)},
        "tests": {"adversarial": sum(t.kind == "adversarial" for t in kept), "coverage": sum(t.kind == "coverage" for t in kept),
                  "dropped_at_verification": dropped,
                  "left_out_as_covered_by_earlier_inputs": duplicates,
                  "targets_tried": sum(r.targets_tried for r in records),
                  "probe_evaluations": sum(r.evaluations for r in records)},
        "verification": "every test re-run through onnxruntime: changed pixels recounted (coverage tests within --max-l0), "
                        "label and coverage recomputed",
    }
    return doc, kept, lost


def _calibration(common: Common, model: Any, data: Any, calibration: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    """NBC's calibration inputs: ``--calibration``, else the data's inputs not being evaluated."""
    if calibration is not None:
        calib = load_data(calibration, model.geometry, model.card.range, host=common.host)
        return calib.x, {"source": calib.source, "inputs": len(calib)}
    full = load_data(common.data, model.geometry, model.card.range, host=common.host, labels=common.labels)
    keep = np.setdiff1d(full.index, data.index)
    if not len(keep):
        raise UsageError("--criterion nbc needs a calibration set: every input of the data is being evaluated",
                         hint="give --calibration FILE, or evaluate fewer inputs with --n")
    return full.x[keep], {"source": full.source, "inputs": int(len(keep)), "which": "the data's inputs not being evaluated"}


def _report(model: Any, data: Any, refs: np.ndarray, threat: ThreatModel, per: list[tuple[int, list[TestCase], float]],
            tests: list[GeneratedTest], max_t: int, per_input: int, max_l0: int, seconds: float,
            coverage: dict[str, Any] | None, *, complete: bool = True) -> dict[str, Any]:
    """The result document: one sample per input; ``cases`` (the adversarial cases),
    ``coverage_tests`` and ``coverage``."""
    inputs, cases, guided = [], [], []
    adversarial = [t for t in tests if t.kind == "adversarial"]
    by_pos: dict[int, list[GeneratedTest]] = {}
    for t in tests:
        by_pos.setdefault(t.pos, []).append(t)
    for pos, _, secs in per:
        index = int(data.index[pos])
        label = None if data.y is None else int(data.y[pos])
        mine = [t for t in by_pos.get(pos, []) if t.kind == "adversarial"]
        theirs = [t for t in by_pos.get(pos, []) if t.kind == "coverage"]
        inputs.append({"index": index, "label": label, "reference": int(refs[pos]), "cases": len(mine),
                       "l0": [t.l0 for t in mine], "new_labels": [t.label_after for t in mine],
                       "coverage_tests": len(theirs), "targets_newly_covered": sum(len(t.new) for t in by_pos.get(pos, [])),
                       "seconds": round(secs, 4)})
    for t in adversarial:
        cases.append({"index": int(data.index[t.pos]), "label_clean": t.label_before, "label_new": t.label_after, "l0": t.l0,
                      "level": t.level, "source": t.source, "pixels": t.units.tolist(), "targets_newly_covered": len(t.new)})
    for t in tests:
        if t.kind == "coverage":
            guided.append({"index": int(data.index[t.pos]), "l0": t.l0, "target": t.target_name, "targets_newly_covered": len(t.new),
                           "label_before": t.label_before, "label_after": t.label_after})
    l0s = Counter(c["l0"] for c in cases)
    news = Counter(f"{c['label_clean']}->{c['label_new']}" for c in cases)
    extras: dict[str, Any] = {} if coverage is None else {"coverage": coverage, "coverage_tests": guided}
    return result_document(
        "testgen",
        model=model.describe(),
        threat=threat.to_dict(),
        data={"source": data.source, "inputs": len(data), "first_index": int(data.index[0]) if len(data) else None},
        max_t=max_t,
        per_input=per_input,
        max_l0=max_l0,
        seconds=round(seconds, 3),
        summary={
            "inputs": len(per),
            "inputs_with_cases": sum(1 for _, found, _ in per if found),
            "cases": len(cases),
            "l0_distribution": {str(k): l0s[k] for k in sorted(l0s)},
            "new_labels": sorted({c["label_new"] for c in cases}),
            "transitions": {k: news[k] for k in sorted(news)},
            "coverage_tests": len(guided),
            "coverage_tests_label_changed": sum(g["label_after"] != g["label_before"] for g in guided),
            "seconds": round(seconds, 3),
        },
        cases=cases,
        **extras,
        samples=inputs,
        **({} if complete else {"complete": False}),
    )


def _print(report: dict[str, Any]) -> None:
    table = Table(show_edge=False, title=f"adversarial test cases (from the searches at t = 1..{report['max_t']} and toward each "
                                         f"other class; up to {report['per_input']} per input; L0 = pixels a case changes)")
    for col in ("index", "label", "pred", "cases", "L0", "new labels", "coverage tests", "seconds"):
        table.add_column(col, justify="right")
    for r in report["samples"]:
        table.add_row(str(r["index"]), "-" if r["label"] is None else str(r["label"]), str(r["reference"]), str(r["cases"]),
                      ",".join(map(str, r["l0"])) or "-", ",".join(map(str, r["new_labels"])) or "-",
                      str(r["coverage_tests"]), f"{r['seconds']:.2f}")
    console.out.print(table)
    s = report["summary"]
    dist = ", ".join(f"L0={k}: {v}" for k, v in s["l0_distribution"].items()) or "none"
    moves = ", ".join(f"{k} ({v})" for k, v in s["transitions"].items()) or "none"
    console.out.print(f"{s['inputs_with_cases']}/{s['inputs']} inputs yielded adversarial cases; {s['cases']} cases; {s['seconds']:.1f}s")
    console.out.print(f"L0 distances: {dist}")
    console.out.print(f"new labels reached: {', '.join(map(str, s['new_labels'])) or 'none'}; label changes: {moves}")
    cov = report.get("coverage")
    if cov is not None:
        if cov["available"]:
            name = cov["criterion"].upper()
            console.out.print(
                f"{name} coverage ({cov['targets']:,} targets over {cov['neurons']:,} ReLU neurons in {cov['relu_layers']} layers): "
                f"clean {cov['clean']:.2%}, generated {cov['generated']:.2%}, clean + generated {cov['combined']:.2%}"
            )
            at = ", ".join(f"{v:.2%} at L0 <= {k}" for k, v in cov["at"].items())
            console.out.print(f"{s['coverage_tests']} coverage-guided tests (--max-l0 {cov['max_l0']}; {s['coverage_tests_label_changed']} "
                              f"changed the label); coverage against L0: {at}; "
                              f"{cov['tests']['dropped_at_verification']} dropped at verification")
        else:
            console.out.print(f"coverage not measured: {cov['reason']}")


def _write_files(out: Path, model: Any, data: Any, tests: list[GeneratedTest], report: dict[str, Any]) -> None:
    images = np.stack([t.image(data.x) for t in tests]) if tests else np.zeros((0, *data.x.shape[1:]), np.float32)
    arrays = {
        "index": np.array([int(data.index[t.pos]) for t in tests], np.int64),
        "x": data.to_file_layout(images, model.geometry).astype(np.float32) if tests else np.zeros((0, *data.sample_shape), np.float32),
        "label_clean": np.array([t.label_before for t in tests], np.int64),
        "label_new": np.array([t.label_after for t in tests], np.int64),
        "l0": np.array([t.l0 for t in tests], np.int64),
        "level": np.array([t.level for t in tests], np.int64),
        "kind": np.array([t.kind for t in tests], dtype="<U11"),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(out / "tests.npz", lambda fh: fh.write(buf.getvalue()), binary=True)
    manifest = {
        "tests": [{"row": i, "source_index": int(data.index[t.pos]), "kind": t.kind, "l0": t.l0,
                   "label_before": t.label_before, "label_after": t.label_after, "level": t.level, "source": t.source,
                   "target": t.target_name, "newly_covered": [int(j) for j in t.new]} for i, t in enumerate(tests)],
        "coverage": report.get("coverage"),
    }
    atomic_write(out / "testgen.json", lambda fh: fh.write(json.dumps(manifest, indent=1).encode()), binary=True)
    cov = report.get("coverage") or {}
    if cov.get("available"):
        from l0tre_testgen.figure import coverage_png

        png = coverage_png(cov)
        atomic_write(out / "coverage.png", lambda fh: fh.write(png), binary=True)
    write_result_json(out, report)
