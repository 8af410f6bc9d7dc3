"""``l0tre example-stats``: the number of inputs and the clean accuracy, the standard way.

``common_options`` gives the command every shared option (the model argument, the card flags,
``--data``, ``--n``, ``--start``, ``--out``, ``--format``, ``--seed``, ``--device``,
``--batch-size``, ``--quiet``) and turns ``L0treError``s into one line and an exit code.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
import typer

from l0tre_cli.kit import Common, common_options, console
from l0tre_core import UsageError, atomic_write, json_default

CHANCE_FACTOR = 2.0  # accuracy under this multiple of chance: the model card is probably wrong


@common_options
def example_stats(
    common: Common,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also the accuracy of each class")] = False,
    min_inputs: Annotated[int, typer.Option("--min-inputs", help="Refuse data with fewer inputs than this")] = 1,
) -> None:
    if min_inputs < 0:  # check flags before any slow work; UsageError exits with code 2
        raise UsageError(f"--min-inputs must be >= 0, got {min_inputs}")
    out = common.prepare_out()  # None without --out; an unwritable folder fails now, exit 3
    model = common.load_model()  # model argument + card flags (ModelError/CardError: exit 3)
    data = common.load_data(model)  # --data/--labels/--n/--start (DataError: exit 3)
    if len(data) < min_inputs:
        raise UsageError(f"the data holds {len(data)} inputs, fewer than --min-inputs {min_inputs}")
    report = stats(model, data, per_class=per_class)
    if out is not None:
        atomic_write(out / "example-stats.json", lambda fh: json.dump(report, fh, indent=2, default=json_default))
    if common.format == "json":
        console.print_json(report)  # results go to stdout ...
    else:
        show(report)
    if report["warning"] and not common.quiet:
        console.warn(report["warning"])  # ... messages to stderr


def stats(model: Any, data: Any, *, per_class: bool = False) -> dict[str, Any]:
    pred = model.predict(data.x) if len(data) else np.zeros(0, np.int64)
    report: dict[str, Any] = {
        "command": "example-stats",
        "model": model.describe()["path"],
        "classes": model.n_classes,
        "data": data.source,
        "inputs": len(data),
        "first_index": int(data.index[0]) if len(data) else None,
        "labelled": data.y is not None,
        "accuracy": None,
        "predicted": np.bincount(pred, minlength=model.n_classes).tolist(),
        "warning": None,
    }
    if data.y is not None and len(data):
        acc = float(np.mean(pred == data.y))
        report["accuracy"] = acc
        if acc < CHANCE_FACTOR / model.n_classes:
            report["warning"] = f"clean accuracy {acc:.1%} is near chance: check the model card (l0tre info)"
        if per_class:
            report["per_class"] = {
                str(c): (float(np.mean(pred[data.y == c] == c)) if np.any(data.y == c) else None)
                for c in range(model.n_classes)
            }
    return report


def show(report: dict[str, Any]) -> None:
    acc = "-" if report["accuracy"] is None else f"{report['accuracy']:.1%}"
    console.out.print(f"model     {report['model']}", markup=False)
    console.out.print(f"data      {report['data']}: {report['inputs']} inputs, {report['classes']} classes", markup=False)
    console.out.print(f"accuracy  {acc}" + ("" if report["labelled"] else " (no labels)"), markup=False)
    for c, a in (report.get("per_class") or {}).items():
        console.out.print(f"  class {c}: {'-' if a is None else f'{a:.1%}'}", markup=False)
