"""The options every application command shares, as one decorator.

A plugin command written as::

    @app.command()
    @common_options
    def mycommand(common: Common, depth: int = 3) -> None:
        model = common.load_model()
        data = common.load_data(model)

gets the model argument, the card flags, the data selection, ``--out``, ``--format``, ``--seed``,
``--device`` and ``--batch-size``, and its L0treErrors become one-line messages with exit codes.
"""

from __future__ import annotations

import functools
import inspect
import re
import signal
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typing_extensions import Annotated

from l0tre_cli import console
from l0tre_core.errors import Interrupted, L0treError, UsageError

CARD_PANEL = "Model card"
DATA_PANEL = "Data"
RUN_PANEL = "Run"

# The engine's messages name its parameters as Python does (`max_t`); users of the command line
# read the flag that sets each one. One table: parameter (or card field) -> flag.
FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        # the budget and the threat model
        "max_t", "time_limit", "input_time_limit", "certify_time", "lower", "upper", "values", "unit",
        "against", "score", "seed", "device",
        # the model card, the model and the data
        "layout", "range", "mean", "std", "output", "classes", "channels", "input_name", "output_name",
        "batch_size", "n", "start", "labels",
        # the run's files
        "out", "resume",
        # where the inputs are searched
        "executor", "ray_address",
    )
}
_NAMED = re.compile(r"`(\w+)`")


def user_message(exc: L0treError) -> str:
    """The one line the command line prints for ``exc``: each parameter it names as its flag."""
    return _NAMED.sub(lambda m: FLAGS.get(m[1], m[0]), str(exc))


@dataclass
class Common:
    """The shared options of one command invocation, and the plugin host it runs with."""

    model: Path | None
    data: Path | None
    labels: Path | None
    n: int | None
    start: int
    layout: str | None
    value_range: str | None
    mean: str | None
    std: str | None
    output: str | None
    classes: str | None
    channels: int | None
    input_name: str | None
    output_name: str | None
    out: Path | None
    format: str
    seed: int
    device: str
    batch_size: int | None
    quiet: bool
    host: Any = None
    executor: str = "local"
    ray_address: str | None = None
    executor_opened: bool = False  # whether the command asked for its executor (``open_executor``)

    def card_flags(self) -> dict[str, Any]:
        flags = {
            "layout": self.layout,
            "range": self.value_range,
            "mean": self.mean,
            "std": self.std,
            "output": self.output,
            "classes": self.classes,
            "channels": self.channels,
        }
        return {k: v for k, v in flags.items() if v is not None}

    def checked_card_flags(self) -> dict[str, Any]:
        """The card flags, refused as a usage error (exit 2) when a value is out of its domain.

        Whether a well-formed card fits the model is checked later (a CardError, exit 3).
        """
        from l0tre_core.card import resolve_card
        from l0tre_core.errors import CardError

        flags = self.card_flags()
        try:
            resolve_card(flags=flags, sidecar={}, metadata={}, inferred={})
        except CardError as exc:
            raise UsageError(str(exc), field=exc.field) from None
        return flags

    def prepare_out(self) -> Path | None:
        """Create ``--out`` and check it is writable, before any long work (None without --out)."""
        from l0tre_core.errors import DataError

        if self.out is None:
            return None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".l0tre-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataError(f"cannot write to --out {self.out}: {exc.strerror or exc}") from None
        return self.out

    def open_executor(self) -> Any:
        """The executor chosen with ``--executor`` (and ``--ray-address``), as a context manager:
        ``with common.open_executor() as executor: evaluate(..., executor=executor)``. Ask for it
        before loading anything: a missing Ray is an environment error (exit 4) at once."""
        from l0tre_core import make_executor

        self.executor_opened = True
        return make_executor(self.executor, self.ray_address, device=self.device)

    def load_model(self) -> Any:
        from l0tre_core.model import load_model

        clf = load_model(
            self.model,
            card=self.checked_card_flags(),
            device=self.device,
            batch_size=self.batch_size,
            input_name=self.input_name,
            output_name=self.output_name,
            host=self.host,
        )
        check_normalisation_pair(clf.card)
        for note in clf.describe()["notes"]:
            if not self.quiet:
                console.warn(note)
        return clf

    def load_data(self, model: Any, *, n_default: int | None = None) -> Any:
        from l0tre_core.data import load_data

        n = self.n if self.n is not None else n_default
        if self.data is None and n is None:
            n = None
        return load_data(
            self.data,
            model.geometry,
            model.card.range,
            host=self.host,
            labels=self.labels,
            n=n,
            start=self.start,
            n_classes=model.n_classes,
        )


def check_normalisation_pair(card: Any) -> None:
    """``--mean`` without ``--std`` (or the reverse), with no card source for the other: a usage error."""
    if (card.mean is None) == (card.std is None):
        return
    given, missing = ("mean", "std") if card.mean is not None else ("std", "mean")
    if card.sources.get(given) == "flag":
        raise UsageError(
            f"`{given}` was given without `{missing}`: normalisation needs both `mean` and `std`", field=missing
        )


SKIPPABLE = ("out", "seed", "batch_size", "quiet", "executor")  # executor: --executor and --ray-address


def common_options(fn: Callable[..., Any] | None = None, *, without: tuple[str, ...] = ()) -> Any:
    """Add the shared options to a command whose first parameter is ``common: Common``.

    ``@common_options(without=("seed",))`` leaves out options the command does nothing with (any
    of ``out``, ``seed``, ``batch_size``, ``quiet``, ``executor``); ``common`` then holds their
    defaults. A command that loops over inputs runs them with ``common.open_executor()``."""
    unknown = set(without) - set(SKIPPABLE)
    if unknown:
        raise TypeError(f"common_options cannot leave out {', '.join(sorted(unknown))} (only {', '.join(SKIPPABLE)})")
    if fn is None:
        return lambda f: _common_options(f, tuple(without))
    return _common_options(fn, tuple(without))


def _common_options(fn: Callable[..., Any], without: tuple[str, ...]) -> Callable[..., Any]:
    def wrapper(
        ctx: typer.Context,
        model: Annotated[Optional[Path], typer.Argument(help="ONNX model file", show_default="the embedded MNIST demo")] = None,
        data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Data: .npz (x, y), MNIST IDX, CSV rows label,p1,.. (0-255, H,W,C), or a folder of class folders", rich_help_panel=DATA_PANEL, show_default="the demo's held-out images")] = None,
        labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels file, when not found beside the data", rich_help_panel=DATA_PANEL, show_default=False)] = None,
        n: Annotated[Optional[int], typer.Option("--n", help="Number of inputs to use (robustness on the demo data: 20)", rich_help_panel=DATA_PANEL, show_default="all")] = None,
        start: Annotated[int, typer.Option("--start", help="Position in the data of the first input", rich_help_panel=DATA_PANEL)] = 0,
        layout: Annotated[Optional[str], typer.Option("--layout", metavar="[nchw|nhwc|flat]", help="Input layout", rich_help_panel=CARD_PANEL, show_default="inferred")] = None,
        value_range: Annotated[Optional[str], typer.Option("--range", metavar="LO,HI", help="Valid range of data values", rich_help_panel=CARD_PANEL, show_default="0,1")] = None,
        mean: Annotated[Optional[str], typer.Option("--mean", help="Normalisation done outside the graph: per-channel means, e.g. 0.49,0.48,0.45", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        std: Annotated[Optional[str], typer.Option("--std", help="Per-channel standard deviations for --mean", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        output: Annotated[Optional[str], typer.Option("--output", metavar="[logits|probs]", help="What the model outputs", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        classes: Annotated[Optional[str], typer.Option("--classes", help="Comma-separated class names", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        channels: Annotated[Optional[int], typer.Option("--channels", help="Channels per pixel of a flat input", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        input_name: Annotated[Optional[str], typer.Option("--input-name", help="Model input to use when there are several", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        output_name: Annotated[Optional[str], typer.Option("--output-name", help="Model output to use when there are several", rich_help_panel=CARD_PANEL, show_default=False)] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for result files", rich_help_panel=RUN_PANEL, show_default=False)] = None,
        format: Annotated[str, typer.Option("--format", "-f", metavar="[table|json]", help="Results on stdout as a table or JSON", rich_help_panel=RUN_PANEL)] = "table",
        seed: Annotated[int, typer.Option("--seed", help="Random seed", rich_help_panel=RUN_PANEL)] = 0,
        device: Annotated[str, typer.Option("--device", metavar="[auto|cpu|cuda]", help="Where the model and the search run", rich_help_panel=RUN_PANEL)] = "auto",
        batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Inputs per model call (default: the search measures and picks its own)", rich_help_panel=RUN_PANEL, show_default="auto")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output", rich_help_panel=RUN_PANEL)] = False,
        executor: Annotated[str, typer.Option("--executor", metavar="[local|ray]", help="Where the inputs are searched: this process, or a Ray cluster (needs the ray extra)", rich_help_panel=RUN_PANEL)] = "local",
        ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="With --executor ray: 'auto' joins this machine's cluster, HOST:PORT another", rich_help_panel=RUN_PANEL, show_default="start a local Ray runtime")] = None,
        **kwargs: Any,
    ) -> Any:
        common = Common(
            model=model, data=data, labels=labels, n=n, start=start, layout=layout,
            value_range=value_range, mean=mean, std=std, output=output, classes=classes,
            channels=channels, input_name=input_name, output_name=output_name, out=out,
            format=format, seed=seed, device=device, batch_size=batch_size, quiet=quiet,
            host=ctx.find_root().obj, executor=executor, ray_address=ray_address,
        )

        def body() -> Any:
            done = fn(common, **kwargs)
            if common.executor != "local" and not common.executor_opened and not common.quiet:
                console.warn(f"--executor {common.executor} is not supported by this command yet: "
                             "every input ran in this process")
            return done

        return run_guarded(body, fmt=format)

    # Typer reads parameters from __signature__ and types from __annotations__; resolve both
    # modules' string annotations here, each in its own namespace.
    own_hints = typing.get_type_hints(fn, include_extras=True)
    shared_hints = typing.get_type_hints(wrapper, include_extras=True)
    own = [p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in list(inspect.signature(fn).parameters.values())[1:]]
    shared = [
        p.replace(annotation=shared_hints.get(name, p.annotation))
        for name, p in inspect.signature(wrapper).parameters.items()
        if name != "kwargs" and name not in without
    ]
    functools.update_wrapper(wrapper, fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=())
    del wrapper.__wrapped__
    wrapper.__signature__ = inspect.Signature(shared + own)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in shared + own}
    return wrapper


def run_guarded(body: Callable[[], Any], *, fmt: str = "table") -> Any:
    """Run a command body: user errors become one line and an exit code, SIGTERM acts as Ctrl-C."""
    if fmt not in ("table", "json"):
        console.error(f"--format must be table or json, got {fmt!r}")
        raise typer.Exit(UsageError.exit_code)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        previous = None
    try:
        return body()
    except L0treError as exc:
        # Messages quote paths and values from the user: "[/x]" must print as is, not as markup.
        console.error(user_message(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise typer.Exit(Interrupted.exit_code) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
