"""``l0tre robustness``: anytime lower and upper bounds of L0 robustness, per input and global.

This is a plugin like any third party's: it registers a Typer command through
``l0tre_register_commands`` and uses only the public engine API.
"""

from __future__ import annotations

import typer

from l0tre_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    from l0tre_robustness.command import robustness

    app.command(
        "robustness",
        help="Bound how many pixels must change to flip each input's label, and the mean over the data (global robustness).",
        rich_help_panel="Applications",
    )(robustness)
