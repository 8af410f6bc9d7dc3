"""The ``robustness`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from typing_extensions import Annotated

from l0tre_robustness.cost import DEMO_N, LARGE, estimate_line, evaluations, further_line, measure_rate
from l0tre_cli.kit import SEARCH_PANEL, Common, InputProgress, common_options, console, search_options
from l0tre_core import (
    CHECKPOINT_NAME,
    Budget,
    CertificateContradiction,
    Interrupted,
    RunResult,
    ThreatModel,
    UsageError,
    WorkersLost,
    checked_result,
    evaluate,
)

PANEL = SEARCH_PANEL


@common_options
@search_options(panel=PANEL)
def robustness(
    common: Common,
    *,
    max_t: int,
    time_limit: Optional[float],
    input_time_limit: Optional[float],
    values: str,
    unit: str,
    against: str,
    score: str,
    certify_time: Annotated[float, typer.Option("--certify-time", help="Certificate splitting per input and level t >= 2, in seconds (t = 1 gets at least 60)", rich_help_panel=PANEL)] = 10.0,
    lower: Annotated[str, typer.Option("--lower", metavar="METHOD", help="Lower bounds: auto (sound certificates where every operator is supported, enumeration over V where they fail), sound, discrete or both", rich_help_panel=PANEL)] = "auto",
    upper: Annotated[Optional[list[str]], typer.Option("--upper", help="Extra upper-bound searches after the sensitivity search (repeatable; 'none' for none)", rich_help_panel=PANEL, show_default="every installed one")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run checkpointed in --out", rich_help_panel=PANEL)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh in an --out that holds an earlier run's checkpoint", rich_help_panel=PANEL)] = False,
) -> None:
    budget = Budget(max_t=max_t, time_limit=time_limit, input_time_limit=input_time_limit, certify_time=certify_time)
    if resume and common.out is None:
        raise UsageError("--resume needs --out, the folder of the run to continue")
    executor = common.open_executor()  # a missing Ray is an environment error before any work
    model = common.load_model()
    threat = ThreatModel(lo=model.card.lo, hi=model.card.hi, unit=unit, values=values, against=against, score=score)
    data = common.load_data(model)  # with --data, or with --n: all the inputs asked for
    total = len(data)
    if common.data is None and common.n is None and total > DEMO_N:
        data = common.load_data(model, n_default=DEMO_N)  # the demo: a sample that finishes in seconds
    if not (resume or overwrite):
        refuse_to_restart(common.out)
    out = common.prepare_out()
    if resume and out is not None and not (out / CHECKPOINT_NAME).is_file():
        raise UsageError(f"--out {out} holds no checkpoint to continue", hint="drop --resume to start a run there")
    talk = not common.quiet
    encoder = model.encoder(unit)
    n_values = len(threat.value_set(encoder.channels))
    rate = measure_rate(model, data.x) if talk else None
    if rate is not None and evaluations(len(data), encoder.n_units, n_values, max_t) / rate > LARGE:
        console.err.print(estimate_line(len(data), encoder.n_units, n_values, max_t, rate), soft_wrap=True, markup=False)
    view = InputProgress("l0tre robustness", len(data), quiet=common.quiet, classifier=model, resumed=resume)
    try:
        with view, executor:
            result = evaluate(
                model, data, threat=threat, budget=budget, lower=lower, device=common.device,
                out=out, resume=resume, seed=common.seed, host=common.host, listeners=[view], upper=upper,
                executor=executor,
            )
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "result", None)
        if out is None and partial is not None:
            report(partial, common, None)  # nothing saved: the bounds reached so far go to stdout
            where = "; the partial results are above (nothing was saved: use --out to keep a run)"
        else:
            where = f"; partial results and checkpoint in {out} (continue with --resume)" if out else ""
        stop = Interrupted(f"interrupted{where}")
        stop.result = partial
        raise stop from None
    except (CertificateContradiction, WorkersLost) as exc:
        if exc.result is not None:
            report(exc.result, common, out)  # the verified witnesses (or the inputs done) are results too
        raise
    report(result, common, out)
    if rate is not None and common.format != "json":  # a hint for table runs (progress stays on with json)
        console.err.print(
            further_line(inputs=len(data), total=total, seconds=result.seconds, units=encoder.n_units,
                         values=n_values, max_t=max_t, rate=rate,
                         certify_seconds=0.0 if lower == "discrete" else certify_time),
            soft_wrap=True, markup=False,
        )


def report(result: RunResult, common: Common, out: Path | None) -> None:
    if common.format == "json":
        console.print_json(checked_result(result.to_json()))  # what results.json holds
    else:
        print_table(result)
    for note in result.model.get("notes", []):
        if ("sound lower bounds unavailable" in note or "lower-bound method failed" in note) and not common.quiet:
            console.warn(note)
    if out is not None and not common.quiet:
        console.err.print(f"results written to {escape(str(out))}", soft_wrap=True)


def refuse_to_restart(out: Path | None) -> None:
    """Never start over an earlier run's checkpoint by accident."""
    if out is not None and (out / CHECKPOINT_NAME).is_file():
        raise UsageError(
            f"--out {out} holds the checkpoint of an earlier run",
            hint="continue it with --resume, or start afresh with --overwrite",
        )


def print_table(result: RunResult) -> None:
    table = Table(show_edge=False, title="L0 robustness (pixels that must change)")
    for col in ("index", "label", "ref", "lower", "upper", "guarantee", "exact", "evals", "seconds"):
        table.add_column(col, justify="right" if col not in ("guarantee",) else "left")
    for s in result.samples:
        table.add_row(
            str(s.index), "-" if s.label is None else str(s.label), str(s.reference), str(s.lower),
            "?" if s.upper is None else str(s.upper), s.guarantee,
            "yes" if s.exact else ("over V" if s.exact_over_v else ("float32 band" if s.float32_band else "")),
            f"{s.evaluations:,}", f"{s.seconds:.2f}",
        )
    console.out.print(table)
    up = result.global_upper
    console.out.print(
        f"global robustness (mean d* over {len(result.samples)} input{'' if len(result.samples) == 1 else 's'}): "
        f"lower {result.global_lower:.3f}, upper {'?' if up is None else f'{up:.3f}'}; "
        f"lower-bound guarantees: {', '.join(sorted({s.guarantee for s in result.samples}))}; "
        f"{sum(s.exact for s in result.samples)} exact, {sum(s.exact_over_v for s in result.samples)} exact over V; "
        f"{sum(s.float32_band is not None for s in result.samples)} left in the float32 band; {result.seconds:.1f}s"
    )
