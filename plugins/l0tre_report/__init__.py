"""``l0tre report``: one self-contained HTML page for the result folders of any application (its
``results.json``): summary, sortable per-input table, charts, witness and saliency images, model
card and versions; several folders are compared side by side.

A plugin like any third party's: one Typer command through ``l0tre_register_commands``.
"""

from __future__ import annotations

import typer

from l0tre_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    from l0tre_report.command import report

    app.command(
        "report",
        help="One self-contained HTML report (no network needed to view it) of one or more result folders; several folders are compared.",
        rich_help_panel="Applications",
    )(report)
