"""Every hook l0tre calls, in one place, grouped by phase.

A plugin is a module (or object) with functions decorated by ``l0tre_core.hookimpl`` whose names
match the specs below. Declare it in your package's ``pyproject.toml``::

    [project.entry-points.l0tre]
    myplugin = "l0tre_myplugin"

or load a local module with ``l0tre -p my_module``. The ``register_*`` hooks receive a
``register`` callback; registering a name that another plugin already registered is an error
naming both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import typer

    from l0tre_core.events import BoundUpdate
    from l0tre_core.registry import BoundMethod, DataFormat, InferenceBackend, ArrayKernels

hookspec = pluggy.HookspecMarker("l0tre")


# --- start-up: what the plugin provides ---------------------------------------------------------


@hookspec
def l0tre_register_commands(app: "typer.Typer") -> None:
    """Add Typer commands or sub-apps to the ``l0tre`` command line.

    Use ``l0tre_cli.options`` for the options every application shares (model, card flags, data,
    ``--n``, ``--out``, ``--format``, ``--seed``, ``--device``, ``--batch-size``) so that your
    command reads like the built-in ones. Raise ``l0tre_core.errors.L0treError`` subclasses for
    problems the user can fix: the CLI turns them into one line and an exit code.
    """


@hookspec
def l0tre_register_data_formats(register: "Callable[[DataFormat], None]") -> None:
    """Register readers of data-set files (``DataFormat`` objects with a unique ``name``)."""


@hookspec
def l0tre_register_backends(register: "Callable[[InferenceBackend], None]") -> None:
    """Register inference backends that turn a model file into a runnable ``Runtime``."""


@hookspec
def l0tre_register_array_kernels(register: "Callable[[ArrayKernels], None]") -> None:
    """Register array kernels that build perturbation tensors on a device (NumPy, CuPy, ...)."""


@hookspec
def l0tre_register_bound_methods(register: "Callable[[BoundMethod], None]") -> None:
    """Register lower-bound certifiers and upper-bound searches (``BoundMethod`` objects).

    A method's ``kind`` is ``"lower"`` or ``"upper"``; a lower-bound method states the guarantee
    (``sound`` or ``discrete``) its certificates carry.
    """


# --- during a run ---------------------------------------------------------------------------------


@hookspec
def l0tre_bounds_updated(update: "BoundUpdate") -> None:
    """Called whenever the bounds of one input improve, and once more when it is finished.

    ``update`` carries the input's index, its current lower and upper bound, the guarantee of the
    lower bound, the evaluations spent and the elapsed seconds. Keep it fast: it runs on the
    search's thread.
    """
