"""The errors l0tre reports to users.

Every failure a user can cause (a bad file, a wrong flag, a missing GPU) is one of these; the CLI
prints its message on one line and exits with its code. Anything else escaping is a bug.
"""

from __future__ import annotations


class L0treError(Exception):
    """Base of the errors that reach the user as one line and an exit code.

    A message names the parameters it is about as Python code does, in backticks (for example
    "`max_t` must be at least 1, got 0"), and ``field`` is the main one (``"max_t"``; None when
    the error is about no single parameter). The command line shows each named parameter as the
    flag that sets it ("--max-t must be at least 1, got 0").
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.field = field

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class UsageError(L0treError):
    """Options that make no sense together or values out of their domain."""

    exit_code = 2


class ModelError(L0treError):
    """The model file cannot be loaded or does not fit the model card."""

    exit_code = 3


class CardError(ModelError):
    """The model card is contradictory or cannot be resolved."""


class DataError(L0treError):
    """The data cannot be read or does not fit the model."""

    exit_code = 3


class PluginError(L0treError):
    """A plugin failed to load or two plugins claim the same name."""

    exit_code = 3


class EnvironmentProblem(L0treError):
    """The machine cannot do what was asked (no usable GPU, conflicting packages)."""

    exit_code = 4


class CheckpointError(L0treError):
    """A checkpoint is corrupt or belongs to another run."""

    exit_code = 3


class CertificateContradiction(L0treError):
    """A sound lower bound was above a verified witness: a bug in a certifier. The results are
    written with the witness kept and no lower bound above it; the run exits with code 5."""

    exit_code = 5
    result: object = None  # the run's results, witnesses kept


class Interrupted(L0treError):
    """The run was stopped by a signal after saving what it had; ``result`` holds the bounds
    reached so far when there are any (a command without ``--out`` prints them)."""

    exit_code = 130
    result: object = None
