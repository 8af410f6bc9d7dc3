"""The search options, declared once: every command that takes one gets the same flag, help and default.

A command names the ones it takes as keyword-only parameters without defaults, and the decorator
gives each its option::

    @common_options
    @search_options(panel="Test generation")
    def testgen(common: Common, *, max_t: int, values: str, per_input: Annotated[int, typer.Option(...)] = 4):
        ...

The defaults are the engine's own (``Budget``, ``ThreatModel``), so the command line and
``evaluate()`` from Python agree.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import typer
from typing_extensions import Annotated

from l0tre_core.driver import Budget
from l0tre_core.threat import ThreatModel

SEARCH_PANEL = "Search"
F = TypeVar("F", bound=Callable[..., Any])


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclass(frozen=True)
class SearchOption:
    flag: str
    type: Any
    default: Any
    help: str
    metavar: str | None = None  # the choices, for options that take one of a few words

    def annotation(self, panel: str) -> Any:
        shown: bool | str = True if self.default is not None else "none"  # one style: [default: none]
        option = typer.Option(self.flag, help=self.help, rich_help_panel=panel, show_default=shown, metavar=self.metavar)
        return Annotated[self.type, option]


SEARCH_OPTIONS: dict[str, SearchOption] = {
    "max_t": SearchOption(
        "--max-t", int, _default(Budget, "max_t"),
        "Largest subset size t: changes of up to t pixels are searched, enumerated or certified "
        "(cost per input: C(pixels, t) x |V|^t)",
    ),
    "time_limit": SearchOption(
        "--time-limit", Optional[float], _default(Budget, "time_limit"),
        "Time limit for the whole run, in seconds (design: for each model)",
    ),
    "input_time_limit": SearchOption(
        "--input-time-limit", Optional[float], _default(Budget, "input_time_limit"),
        "Time limit for each input, in seconds",
    ),
    "values": SearchOption(
        "--values", str, _default(ThreatModel, "values"),
        "Values V a changed pixel takes in the search: corners (each channel at either end of the range) "
        "or grid:K (K evenly spaced levels per channel)",
    ),
    "score": SearchOption(
        "--score", str, _default(ThreatModel, "score"),
        "Sensitivity score: margin (reference minus the best other class) or logit (the reference alone, "
        "as the original L0-TRE)", "[margin|logit]",
    ),
    "unit": SearchOption(
        "--unit", str, _default(ThreatModel, "unit"),
        "What counts as one change: pixel (all its channels) or feature (one value)", "[pixel|feature]",
    ),
    "against": SearchOption(
        "--against", str, _default(ThreatModel, "against"),
        "Reference label a change must move away from: prediction (the model's) or label (the ground truth)",
        "[prediction|label]",
    ),
}


def search_options(*, panel: str = SEARCH_PANEL) -> Callable[[F], F]:
    """Give each parameter of the command named like a search option (``max_t``, ``time_limit``,
    ``input_time_limit``, ``values``, ``score``, ``unit``, ``against``) that option's flag, help
    text and default, in the help panel ``panel``."""

    def decorate(fn: F) -> F:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = []
        taken = []
        for p in inspect.signature(fn).parameters.values():
            option = SEARCH_OPTIONS.get(p.name)
            if option is None:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
                continue
            if p.default is not inspect.Parameter.empty:
                raise TypeError(f"{fn.__name__}: {p.name} takes its default from search_options; declare it without one")
            params.append(p.replace(annotation=option.annotation(panel), default=option.default))
            taken.append(p.name)
        if not taken:
            raise TypeError(f"{fn.__name__} takes none of the search options ({', '.join(SEARCH_OPTIONS)})")
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return decorate
