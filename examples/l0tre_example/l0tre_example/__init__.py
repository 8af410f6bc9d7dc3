"""An example l0tre plugin: a lower-bound method, an upper-bound method and a command.

l0tre finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.l0tre]
    example = "l0tre_example"

and calls the functions below that are marked with ``hookimpl`` and named after a hook of
``l0tre_core.hookspecs``. The plugin imports only the façade ``l0tre_core`` and the CLI kit
``l0tre_cli.kit``; everything else in l0tre may change between versions.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from l0tre_core import hookimpl

if TYPE_CHECKING:
    import typer

    from l0tre_core import BoundUpdate

__version__ = "0.1.0"  # shown by `l0tre plugins` (the distribution's version when installed)

TRACE_ENV = "L0TRE_EXAMPLE_TRACE"


@hookimpl
def l0tre_register_bound_methods(register: Callable[[Any], None]) -> None:
    from l0tre_example.methods import GreedyDrop, Grid3

    register(Grid3())
    register(GreedyDrop())


@hookimpl
def l0tre_register_commands(app: "typer.Typer") -> None:
    # Imported here, not at the top: `l0tre` builds its command line on every start, and a plugin
    # should cost nothing until its command is used.
    from l0tre_example.command import example_stats

    app.command("example-stats", help="Clean accuracy and number of inputs (the example plugin's command).")(example_stats)


@hookimpl
def l0tre_bounds_updated(update: "BoundUpdate") -> None:
    # Runs on the search's thread after every phase and step: keep it cheap. Off unless asked.
    if os.environ.get(TRACE_ENV) and update.recorded:
        upper = "?" if update.upper is None else update.upper
        print(f"example: input {update.index} level {update.level}: {update.lower} <= d* <= {upper} ({update.guarantee})",
              file=sys.stderr)
