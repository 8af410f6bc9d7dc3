"""``l0tre testgen``: adversarial test cases from the L0-TRE search (Case Study Five, adapted):
the flipping assignments and tightened witnesses of levels 1..T, verified and deduplicated, with
the neuron coverage of the generated set.

A plugin like any third party's: one Typer command through ``l0tre_register_commands``.
"""

from __future__ import annotations

import typer

from l0tre_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    from l0tre_testgen.command import testgen

    app.command(
        "testgen",
        help="Generate adversarial test cases by the L0-TRE search: verified, deduplicated, with their L0 distances, new labels and neuron coverage.",
        rich_help_panel="Applications",
    )(testgen)
