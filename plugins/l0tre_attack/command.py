"""The ``attack`` command."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table
from typing_extensions import Annotated

from l0tre_attack.random_search import DEFAULT_K_CAP
from l0tre_attack.run import ATTACK_BUDGET
from l0tre_attack.run import SUCCESS_AT, AttackResult, check_settings, run_attack, write_outputs
from l0tre_cli.kit import Common, InputProgress, common_options, console, search_options
from l0tre_core import Interrupted, ThreatModel, checked_result

PANEL = "Attack"


@common_options
@search_options(panel=PANEL)
def attack(
    common: Common,
    *,
    values: str,
    against: str,
    time_limit: Optional[float],
    input_time_limit: Optional[float],
    budget: Annotated[int, typer.Option("--budget", help="Random-search evaluations per input, after the t=1 sensitivity sweep (0: sensitivity search alone)", rich_help_panel=PANEL)] = ATTACK_BUDGET,
    k_max: Annotated[int, typer.Option("--k-max", help="Largest number of pixels the random search starts from when the sensitivity search found nothing (larger verified examples are still reported)", rich_help_panel=PANEL)] = DEFAULT_K_CAP,
) -> None:
    check_settings(budget, k_max, time_limit, input_time_limit)
    executor = common.open_executor()  # a missing Ray is an environment error before any work
    model = common.load_model()
    threat = ThreatModel(lo=model.card.lo, hi=model.card.hi, values=values, against=against)
    data = common.load_data(model)
    out = common.prepare_out()
    progress = InputProgress("l0tre attack", len(data), quiet=common.quiet, classifier=model)
    sizes: list[float] = []

    def show(record: Any, done: int, total: int) -> None:
        sizes.append(float("inf") if record.l0 is None else float(record.l0))
        found = sum(np.isfinite(sizes))
        median = float(np.median(sizes))
        progress.update(done, f"success {found}/{done}  median L0 {median:g}")

    with progress, executor:
        result = run_attack(
            model, data, threat=threat, budget=budget, k_max=k_max, seed=common.seed, device=common.device,
            host=common.host, time_limit=time_limit, input_time_limit=input_time_limit, listeners=[show],
            executor=executor,
        )
    if out is not None:
        write_outputs(result, out, data, model.geometry)
    if common.format == "json":
        console.print_json(checked_result(result.to_json()))  # what results.json holds
    else:
        print_table(result)
    if out is not None and not common.quiet:
        console.err.print(f"results written to {out}")
    if result.interrupted:
        where = f"; results for the inputs done are in {out}" if out else ""
        raise Interrupted(f"interrupted after {len(result.records)} of {len(data)} inputs{where}")


def print_table(result: AttackResult) -> None:
    table = Table(show_edge=False, title="L0 attack (pixels changed by the smallest adversarial example found)")
    for col in ("index", "label", "ref", "L0", "evals", "seconds"):
        table.add_column(col, justify="right")
    for r in result.records:
        table.add_row(
            str(r.index), "-" if r.label is None else str(r.label), str(r.reference),
            "-" if r.l0 is None else str(r.l0), f"{r.evaluations:,}", f"{r.seconds:.2f}",
        )
    console.out.print(table)
    s = result.summary
    rates = "  ".join(f"<={k}: {100 * s['success_at'][str(k)]:.0f}%" for k in SUCCESS_AT)
    median = "-" if s["median_l0"] is None else f"{s['median_l0']:g}"
    console.out.print(
        f"success {s['successes']}/{s['inputs']} ({100 * s['success_rate']:.0f}%); "
        f"median L0 {median}; {result.seconds:.1f}s"
    )
    console.out.print(f"success rate at L0: {rates}")
    if not result.complete:
        console.out.print(f"stopped early: {len(result.records)} of {result.data['inputs']} inputs attacked")
