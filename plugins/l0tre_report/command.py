"""The ``report`` command: ``l0tre report RUN_DIR... [--out report.html]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from l0tre_cli.kit import console, run_guarded
from l0tre_core import UsageError, atomic_write

PANEL = "Report"


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Result folders (written by any application with --out)", metavar="RUN_DIR...", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="The HTML file to write", rich_help_panel=PANEL, show_default="RUN_DIR/report.html for one folder, report.html for several")] = None,
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Data files the runs used (repeatable; each serves the runs that recorded its file name), to show the clean inputs beside the witnesses; found automatically for the demo and for a file beside the folder", rich_help_panel=PANEL)] = None,
    max_images: Annotated[int, typer.Option("--max-images", help="Most inputs pictured per run", rich_help_panel=PANEL)] = 16,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No message on stderr")] = False,
) -> None:
    def body() -> None:
        from l0tre_report.page import render
        from l0tre_report.runs import read_runs

        if max_images < 0:
            raise UsageError(f"--max-images must be >= 0, got {max_images}")
        for d in data or []:
            if not d.exists():
                raise UsageError(f"--data not found: {d}")
        runs = read_runs(list(run_dirs))
        target = out or (runs[0].path / "report.html" if len(runs) == 1 else Path("report.html"))
        if target.is_dir():
            raise UsageError(f"--out {target} is a folder; give the HTML file's name")
        html = render(runs, data=data, max_images=max_images)
        try:
            atomic_write(target, lambda fh: fh.write(html.encode("utf-8")), binary=True)
        except OSError as exc:
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
        if not quiet:
            console.err.print(f"report written to {target} ({len(html) / 1e6:.2f} MB)", soft_wrap=True, markup=False)

    run_guarded(body)
