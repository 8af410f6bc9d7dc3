"""Where output goes: results on stdout, progress and messages on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from l0tre_core.results import json_default

# Consoles created without file= look up sys.stdout/sys.stderr at write time, so tests that
# capture the streams see what was written.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    # user text (paths, flag values) may contain brackets rich would read as markup
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
