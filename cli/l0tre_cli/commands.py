"""The host's own commands: ``info`` (model card and accuracy) and ``plugins``."""

from __future__ import annotations

from typing import Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table
from typing_extensions import Annotated

from l0tre_cli import console
from l0tre_cli.options import Common, common_options, run_guarded

TOOLS_PANEL = "Model and plugins"
CHANCE_FACTOR = 2.0  # accuracy below this multiple of chance suggests a wrong card


def register(app: typer.Typer) -> None:
    app.command("info", help="Show the model's inputs, outputs, resolved card and providers; with --data, the clean accuracy.",
                rich_help_panel=TOOLS_PANEL)(info)
    app.command("plugins", help="List the installed plugins, their versions and hooks.", rich_help_panel=TOOLS_PANEL)(plugins)


@common_options(without=("out", "seed", "executor"))
def info(common: Common) -> None:
    model = common.load_model()
    report: dict[str, Any] = {"model": model.describe()}
    if common.data is not None or common.model is None:
        data = common.load_data(model)
        pred = model.predict(data.x)
        report["data"] = {"source": data.source, "samples": len(data)}
        if data.y is not None:
            acc = float(np.mean(pred == data.y))
            chance = 1.0 / model.n_classes
            report["data"]["accuracy"] = acc
            if acc < CHANCE_FACTOR * chance:
                report["data"]["warning"] = (
                    f"clean accuracy {acc:.1%} is near chance ({chance:.1%}): the model card is probably wrong "
                    "(check --layout, --range, --mean/--std)"
                )
    if common.format == "json":
        console.print_json(report)
    else:
        _print_info(report)
    warning = report.get("data", {}).get("warning")
    if warning:
        console.warn(warning)


def _print_info(report: dict[str, Any]) -> None:
    m = report["model"]
    console.out.print(f"[bold]model[/]      {escape(str(m['path']))}")
    console.out.print(f"input      {m['input']['name']} {m['input']['shape']}", markup=False)
    console.out.print(f"output     {m['output']['name']} {m['output']['shape']} ({m['classes']} classes)", markup=False)
    g = m["geometry"]
    console.out.print(f"pixels     {g['pixels']} x {g['channels']} channel{'' if g['channels'] == 1 else 's'}, image {g['image_shape']}")
    console.out.print(f"providers  {', '.join(m['providers'])}  (batching: {m['batching']})")
    table = Table(title="model card", show_edge=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")  # never cut class names or means with an ellipsis
    table.add_column("from")
    card = m["card"]
    for field in ("layout", "range", "mean", "std", "output", "classes", "channels"):
        value = card[field]
        source = card["sources"].get(field, "default" if value is not None else "")
        shown = "-" if value is None else (",".join(str(v) for v in value) if isinstance(value, list) else str(value))
        style = "yellow" if source == "inferred" else ""
        table.add_row(field, escape(shown), f"[{style}]{source}[/]" if style else source)
    console.out.print(table)
    if card.get("description"):
        console.out.print(f"about      {card['description']}", markup=False)
    if "data" in report:
        d = report["data"]
        acc = f", clean accuracy {d['accuracy']:.1%}" if "accuracy" in d else " (no labels)"
        console.out.print(f"data       {d['source']}: {d['samples']} samples{acc}", markup=False)


def plugins(
    ctx: typer.Context,
    format: Annotated[str, typer.Option("--format", "-f", metavar="[table|json]", help="Results on stdout as a table or JSON")] = "table",
) -> None:
    def body() -> None:
        host = ctx.find_root().obj
        rows = host.plugin_info()
        if format == "json":
            console.print_json(rows)
            return
        table = Table(show_edge=False)
        for col in ("name", "version", "distribution", "hooks", "provides"):
            table.add_column(col)
        for row in rows:
            hooks = ", ".join(h.removeprefix("l0tre_") for h in row["hooks"])
            table.add_row(row["name"], row["version"] or "-", row["distribution"] or "(local)", hooks,
                          ", ".join(row["provides"]))
        console.out.print(table)

    run_guarded(body, fmt=format)
