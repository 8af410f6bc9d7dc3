"""``l0tre saliency``: the L0-TRE saliency map (Case Study Four): how much the score drops when
each single pixel takes its worst value in V, and whether one pixel alone flips the label.

A plugin like any third party's: one Typer command through ``l0tre_register_commands``.
"""

from __future__ import annotations

import typer

from l0tre_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    from l0tre_saliency.command import saliency

    app.command(
        "saliency",
        help="Saliency map: the t=1 sensitivity of every pixel (how far the score drops when that pixel alone takes its worst value).",
        rich_help_panel="Applications",
    )(saliency)
