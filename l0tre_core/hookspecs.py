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
    from l0tre_core.contracts import ArrayKernels, DataFormat, InferenceBackend, LowerBoundMethod, UpperBoundMethod

hookspec = pluggy.HookspecMarker("l0tre")


# --- start-up: what the plugin provides ---------------------------------------------------------


@hookspec
def l0tre_register_commands(app: "typer.Typer") -> None:
    """Add Typer commands or sub-apps to the ``l0tre`` command line.

    Use ``l0tre_cli.kit`` for the options every application shares (``common_options``: model,
    card flags, data, ``--n``, ``--out``, ``--format``, ``--seed``, ``--device``, ``--batch-size``;
    ``search_options``: ``--max-t``, ``--time-limit``, ``--values``, ...) so that your command reads
    like the built-in ones. Raise ``l0tre_core.L0treError`` subclasses for problems the user can
    fix: the CLI turns them into one line and an exit code.
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
def l0tre_register_bound_methods(register: "Callable[[LowerBoundMethod | UpperBoundMethod], None]") -> None:
    """Register lower-bound certifiers and upper-bound searches.

    A method's ``kind`` is ``"lower"`` (a ``LowerBoundMethod``: ``--lower NAME`` selects it; it
    states the guarantee, ``sound`` or ``discrete``, its proofs carry) or ``"upper"`` (an
    ``UpperBoundMethod``: ``--upper NAME``). The contracts are in ``l0tre_core.contracts`` and are
    checked when the method is registered. ``auto``, ``both`` and ``none`` are reserved words.
    """


# --- during a run ---------------------------------------------------------------------------------


@hookspec
def l0tre_bounds_updated(update: "BoundUpdate") -> None:
    """Called when a phase of an input's search starts and when a level's step ends.

    ``update`` (``l0tre_core.events.BoundUpdate``) carries the input's index, its current lower
    and upper bound and their guarantee, the level finished and the one being worked on, the
    phase (``sweep``, ``certify``, ``search``, or ``level`` at the end of a step), the evaluations
    spent, the elapsed seconds and the rate, and the run's global bounds. Keep it fast: it runs
    on the search's thread.
    """
