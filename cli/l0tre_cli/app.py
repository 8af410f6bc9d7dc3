"""The ``l0tre`` command line, built by a factory from a plugin host."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, List, Optional

import typer
from typing_extensions import Annotated

import l0tre_core
from l0tre_cli import console
from l0tre_cli.options import user_message
from l0tre_core.errors import L0treError, PluginError
from l0tre_core.host import PluginHost, create_host

HELP = (
    "How many pixels must change to flip an image classifier's decision: proven lower bounds and "
    "witnessed upper bounds of L0 robustness for any ONNX model.\n\n"
    "Start with `l0tre robustness` (the embedded MNIST demo, about half a minute); the applications: "
    "robustness, attack, saliency, testgen, design.\n\n"
    "Exit codes: 0 success, 2 usage, 3 bad model, card or data, 4 environment, 130 interrupted."
)


def create_app(host: PluginHost | None = None) -> typer.Typer:
    """A fresh Typer app with the host's commands (tests build one per test)."""
    host = host or create_host()
    app = typer.Typer(
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        plugin: Annotated[Optional[List[str]], typer.Option("-p", "--plugin", help="Load a plugin module (or block one with no:NAME)", show_default=False)] = None,
        version: Annotated[bool, typer.Option("--version", help="Show the version and exit", is_eager=True, callback=_show_version)] = False,
    ) -> None:
        ctx.obj = host

    from l0tre_cli import commands

    commands.register(app)
    _register_plugin_commands(app, host)
    # the main command first, then the other applications, then the host's own commands
    main_first = {"robustness": 0}
    app.registered_commands.sort(key=lambda c: (c.rich_help_panel != "Applications", main_first.get(c.name or "", 1)))
    return app


def _register_plugin_commands(app: typer.Typer, host: PluginHost) -> None:
    """Call each plugin's ``l0tre_register_commands`` (in pluggy's order), refusing duplicate names."""
    owners = {name: "l0tre (built-in)" for name in _command_names(app)}
    for impl in reversed(host.hook.l0tre_register_commands.get_hookimpls()):
        before = Counter(_command_names(app))
        try:
            impl.function(app=app)
        except L0treError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed to register its commands: {type(exc).__name__}: {exc}") from None
        for name in (Counter(_command_names(app)) - before).elements():
            if name in owners:
                raise PluginError(
                    f"the command {name!r} is registered by both {owners[name]!r} and {impl.plugin_name!r}; "
                    "block one with -p no:NAME"
                )
            owners[name] = impl.plugin_name


def _show_version(value: bool) -> None:
    # Eager, so that `l0tre --version` works without a command.
    if value:
        console.out.print(f"l0tre {l0tre_core.__version__}")
        raise typer.Exit(0)


def _command_names(app: typer.Typer) -> list[str]:
    names = [c.name or (c.callback.__name__.replace("_", "-") if c.callback else "") for c in app.registered_commands]
    names += [g.name or "" for g in app.registered_groups]
    return names


def plugin_args(argv: list[str]) -> list[str]:
    """The ``-p`` values, read before the app exists because plugins add commands."""
    found = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg in ("-p", "--plugin") and i + 1 < len(argv):
            found.append(argv[i + 1])
            next(it, None)
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-p") and len(arg) > 2:
            found.append(arg[2:])
        elif arg == "--":
            break
    return found


def main(argv: list[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from l0tre_core.host import ensure_importable

        ensure_importable(".")
        app = create_app(create_host(plugin_args(argv)))
    except L0treError as exc:
        console.error(user_message(exc))
        sys.exit(exc.exit_code)
    return app(args=argv, prog_name="l0tre")
