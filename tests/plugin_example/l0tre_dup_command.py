"""A plugin that registers a command named like a built-in one (``info``)."""

from __future__ import annotations

import typer

from l0tre_core import hookimpl


def info() -> None:  # pragma: no cover - never reached
    raise AssertionError("a duplicate command must be refused")


@hookimpl
def l0tre_register_commands(app: typer.Typer) -> None:
    app.command("info")(info)
