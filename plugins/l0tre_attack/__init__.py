"""``l0tre attack``: a competitive L0 attack (the paper's Case Study Three), and the
``random-search`` upper-bound method that any run (``l0tre robustness --upper random-search``)
can use to shrink its witnesses.

This is a plugin like any third party's: it registers through ``l0tre_register_commands`` and
``l0tre_register_bound_methods`` and uses only the public engine API.
"""

from __future__ import annotations

from typing import Any, Callable

import typer

from l0tre_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def l0tre_register_bound_methods(register: Callable[[Any], None]) -> None:
    from l0tre_attack.random_search import RandomSearch

    register(RandomSearch())


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    from l0tre_attack.command import attack

    app.command(
        "attack",
        help="Find adversarial examples that change as few pixels as possible (sensitivity search, then random search).",
        rich_help_panel="Applications",
    )(attack)
