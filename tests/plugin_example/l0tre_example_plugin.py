"""A third-party plugin, as small as one can be: one command, ``hello``, and one using the shared options.

Loaded by the tests with ``l0tre -p l0tre_example_plugin`` (from this folder) or through a
simulated installed distribution whose ``entry_points.txt`` names it in the group ``l0tre``.
"""

from __future__ import annotations

import typer

from l0tre_cli.kit import Common, common_options
from l0tre_core import hookimpl

__version__ = "0.0.1"


def hello(name: str = typer.Option("world", "--name", help="Who to greet")) -> None:
    """Say hello (proves that a plugin's command runs)."""
    typer.echo(f"hello, {name}, from the example plugin")


@common_options
def count_classes(common: Common) -> None:
    """Print the number of classes of the model (proves the shared options work in a plugin)."""
    model = common.load_model()
    typer.echo(f"classes: {model.n_classes}")


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    app.command("hello", help="Say hello from the example plugin.")(hello)
    app.command("count-classes", help="Print the model's number of classes.")(count_classes)
