"""``l0tre design``: robust-design guidance (Case Study Two): the global robustness of several
models on the same inputs under the same budget, ranked, with a claim that one model is more
robust than another only where their bounds prove it.

A plugin like any third party's: one Typer command through ``l0tre_register_commands``.
"""

from __future__ import annotations

import typer

from l0tre_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    from l0tre_design.command import design

    app.command(
        "design",
        help="Compare the global robustness of several models on the same inputs and budget; claim an order only where the bounds prove it.",
        rich_help_panel="Applications",
    )(design)
