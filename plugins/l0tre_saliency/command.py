"""The ``saliency`` command: per input, the t = 1 sensitivity map and its most sensitive pixels.

With ``--out``: ``saliency.npz``, ``saliency.png`` and ``results.json`` (the result document: one
sample per input with its top pixels)."""

from __future__ import annotations

import dataclasses
import io
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table
from typing_extensions import Annotated

from l0tre_cli.kit import Common, InputProgress, common_options, console, search_options
from l0tre_core import (
    CHUNK,
    ClassifierRecipe,
    SearchContext,
    ThreatModel,
    UsageError,
    WorkersLost,
    atomic_write,
    checked_result,
    pick_kernels,
    result_document,
    write_result_json,
)
from l0tre_saliency.figure import SCALES, saliency_png
from l0tre_saliency.saliency import SaliencyMap, image_shape, saliency_map
from l0tre_saliency.task import SaliencyTask, SaliencyWorker

PANEL = "Saliency"


@common_options(without=("seed",))
@search_options(panel=PANEL)
def saliency(
    common: Common,
    *,
    values: str,
    score: str,
    top: Annotated[int, typer.Option("--top", help="Most sensitive pixels listed per input", rich_help_panel=PANEL)] = 10,
    scale: Annotated[str, typer.Option("--scale", help="Colour scale of saliency.png: shared (one scale for every "
                                       "input, comparable) or per-panel (each map its own range)",
                                       rich_help_panel=PANEL)] = "shared",
    memory_mb: Annotated[int, typer.Option("--memory-mb", help="Memory for the sweep: half for the chunk of perturbed "
                                           "inputs built at once, half for the model's batch (unless --batch-size)",
                                           rich_help_panel=PANEL)] = 1024,
) -> None:
    if top < 1:
        raise UsageError(f"--top must be positive, got {top}")
    if memory_mb < 16:
        raise UsageError(f"--memory-mb must be at least 16, got {memory_mb}")
    if scale not in SCALES:
        raise UsageError(f"--scale must be shared or per-panel, got {scale!r}", field="scale")
    executor = common.open_executor()  # a missing Ray is an environment error before any work
    model = common.load_model()
    threat = ThreatModel(lo=model.card.lo, hi=model.card.hi, unit="pixel", values=values, score=score)
    data = common.load_data(model)
    out = common.prepare_out()
    host = common.host
    kernels = pick_kernels(host, common.device)
    plan = memory_plan(model, threat, memory_mb, common.batch_size)
    # the plan's batch size, fixed (no tuning above it); a worker's copy of the model inherits it
    model = dataclasses.replace(model, batch_size=plan["model_batch"])
    recipe = ClassifierRecipe.of(model, host, common.device) if executor.name != "local" else None
    refs = model.predict(data.x)
    shape = image_shape(model.geometry)
    task = SaliencyTask(recipe, threat, data, refs, shape, top, plan["chunk"], common.device)
    found: dict[int, tuple[SaliencyMap, dict[str, Any]]] = {}
    lost: WorkersLost | None = None
    started = time.monotonic()
    with executor, InputProgress("saliency", len(data), quiet=common.quiet) as steps:
        try:
            # maps come back as inputs finish, anywhere; they are kept in input order below
            for pos, done in executor.map(task if recipe is not None else None, range(len(data)), lambda pos: pos,
                                          lambda pos, event: None, local=SaliencyWorker(model, kernels, task)):
                found[pos] = done
                steps.update(len(found))
        except WorkersLost as exc:  # the cluster is gone: the maps finished are written, then exit code 4
            lost = exc
    positions = sorted(found)  # every input, unless the cluster was lost
    maps = [found[pos][0] for pos in positions]
    records = [found[pos][1] for pos in positions]
    seconds = time.monotonic() - started
    evaluations = sum(r["evaluations"] for r in records)
    report = checked_result(result_document(
        "saliency",
        model=model.describe(),
        threat=threat.to_dict(),
        data={"source": data.source, "inputs": len(data), "first_index": int(data.index[0]) if len(data) else None},
        image_shape=list(shape),
        top=top,
        seconds=round(seconds, 3),
        memory={**plan, "peak_rss_mb": peak_rss_mb()},
        summary={
            "inputs": len(records),
            "single_pixel_flips": sum(r["single_pixel_flip"] for r in records),  # inputs one pixel alone flips
            "evaluations": evaluations,
            "seconds": round(seconds, 3),
            "seconds_per_input": round(seconds / max(1, len(records)), 3),
            "evaluations_per_second": round(evaluations / seconds, 1) if seconds > 0 else None,
            "peak_rss_mb": peak_rss_mb(),
        },
        samples=records,
        **({} if lost is None else {"complete": False}),
    ))
    if common.format == "json":
        console.print_json(report)
    else:
        _print_tables(records, threat.score)
    if out is not None:
        if maps:
            _write_files(out, data, refs, positions, maps, shape, model.card.range, records, scale=scale,
                         score=threat.score)
        write_result_json(out, report)
        if not common.quiet:
            console.err.print(f"saliency maps written to {out}")
    if lost is not None:
        raise WorkersLost(f"{lost}; the {len(maps)} of {len(data)} maps finished are in the results")


ACTIVATION_FACTOR = 20  # model memory per input in a batch, in input sizes (measured: MobileNetV2 at 224, about 13 MB per 0.6 MB input)


def memory_plan(model: Any, threat: ThreatModel, memory_mb: int, batch_size: int | None) -> dict[str, Any]:
    """How many perturbed inputs to build at once (the chunk, a multiple of |V|) and how many to
    run per model call, so that the sweep's buffers stay within ``memory_mb``: half for the chunk
    (``chunk x input size`` float32), half for the model's activations (estimated)."""
    input_bytes = 4 * model.geometry.n_pixels * model.geometry.n_channels
    nv = len(threat.value_set(model.geometry.n_channels))
    half = memory_mb * 2**20 // 2
    chunk = max(nv, min(CHUNK, half // input_bytes) // nv * nv)
    largest = model.batch_size or chunk  # a model loaded without a batch size: the chunk bounds it
    batch = batch_size or max(1, min(largest, half // (input_bytes * ACTIVATION_FACTOR), chunk))
    return {"budget_mb": memory_mb, "chunk": int(chunk), "chunk_mb": round(chunk * input_bytes / 2**20, 1),
            "model_batch": int(batch), "values_per_pixel": nv}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def saliency_record(model: Any, kernels: Any, threat: ThreatModel, data: Any, refs: np.ndarray, pos: int,
                    shape: tuple[int, int], top: int, chunk: int) -> tuple[SaliencyMap, dict[str, Any]]:
    """The whole per-input work: the map of input ``pos`` and its record."""
    t0 = time.monotonic()
    ctx = SearchContext(model, kernels, threat, data.x[pos], int(refs[pos]), chunk)
    smap = saliency_map(ctx)
    label = None if data.y is None else int(data.y[pos])
    return smap, _record(int(data.index[pos]), label, int(refs[pos]), smap, shape, top, time.monotonic() - t0)


def _record(index: int, label: int | None, ref: int, smap: SaliencyMap, shape: tuple[int, int], top: int, seconds: float) -> dict[str, Any]:
    w = shape[1]
    rows = []
    for p in smap.top(top):
        rows.append({
            "row": int(p // w), "col": int(p % w), "sensitivity": float(smap.sensitivity[p]),
            "worst_value": [float(v) for v in smap.worst[p]], "flips": bool(smap.flips[p]),
        })
    return {
        "index": index, "label": label, "reference": ref, "clean_score": smap.clean_score,
        "single_pixel_flip": bool(smap.flips.any()), "flipping_pixels": int(smap.flips.sum()),
        "top": rows, "evaluations": smap.evaluations, "seconds": round(seconds, 4),
    }


def _fmt_value(v: list[float]) -> str:
    return f"{v[0]:g}" if len(v) == 1 else "(" + ",".join(f"{c:g}" for c in v) + ")"


def _print_tables(records: list[dict[str, Any]], score: str) -> None:
    for r in records:
        label = "-" if r["label"] is None else r["label"]
        table = Table(show_edge=False, title=f"input {r['index']} (label {label}, prediction {r['reference']}, clean {score} {r['clean_score']:.3f})")
        for col in ("rank", "row", "col", "sensitivity", "worst value", "flips"):
            table.add_column(col, justify="right")
        for k, row in enumerate(r["top"], 1):
            table.add_row(str(k), str(row["row"]), str(row["col"]), f"{row['sensitivity']:.4f}",
                          _fmt_value(row["worst_value"]), "yes" if row["flips"] else "")
        console.out.print(table)
        flip = f"yes ({r['flipping_pixels']} pixels flip it alone)" if r["single_pixel_flip"] else "no"
        console.out.print(f"single-pixel flip: {flip}; {r['evaluations']:,} evaluations, {r['seconds']:.2f}s\n")


def _write_files(out: Path, data: Any, refs: np.ndarray, positions: list[int], maps: list[SaliencyMap], shape: tuple[int, int],
                 value_range: tuple[float, float], records: list[dict[str, Any]], *, scale: str = "shared",
                 score: str = "margin") -> None:
    h, w = shape
    stacked = np.stack([m.sensitivity.reshape(h, w) for m in maps]).astype(np.float32)
    flips = np.stack([m.flips.reshape(h, w) for m in maps])
    buf = io.BytesIO()
    np.savez_compressed(buf, index=data.index[positions].astype(np.int64), maps=stacked, flips=flips,
                        reference=refs[positions].astype(np.int64))
    atomic_write(out / "saliency.npz", lambda fh: fh.write(buf.getvalue()), binary=True)
    images = data.x[positions].reshape(len(positions), h, w, -1)
    titles = [f"#{r['index']}  label {'-' if r['label'] is None else r['label']}  pred {r['reference']}"
              + ("\n1 pixel alone flips it" if r["single_pixel_flip"] else "") for r in records]
    png = saliency_png(images, stacked, titles, value_range, scale=scale, score=score)
    atomic_write(out / "saliency.png", lambda fh: fh.write(png), binary=True)

