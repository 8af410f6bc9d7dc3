"""What a plugin's command takes from the command line: the one ``l0tre_cli`` module plugins import.

- ``common_options`` and ``Common``: the model, card, data and run options every application
  command shares, with ``common.load_model()``, ``common.load_data(model)`` and
  ``common.prepare_out()``; the command's L0treErrors become one-line messages and exit codes;
- ``search_options``: ``--max-t``, ``--time-limit``, ``--input-time-limit``, ``--values``,
  ``--score``, ``--unit`` and ``--against``, declared once (the command names the ones it takes);
- ``run_guarded``: the same error handling for a command without ``common_options``;
- ``console``: results on stdout (``console.out``, ``console.print_json``), messages on stderr
  (``console.err``, ``console.warn``, ``console.error``);
- ``InputProgress``: progress over the inputs, also an ``evaluate`` listener.

Everything from the engine comes from ``l0tre_core`` itself.
"""

from __future__ import annotations

from l0tre_cli import console
from l0tre_cli.options import Common, common_options, run_guarded
from l0tre_cli.progress import InputProgress
from l0tre_cli.search_options import SEARCH_PANEL, search_options

__all__ = ["Common", "InputProgress", "SEARCH_PANEL", "common_options", "console", "run_guarded", "search_options"]
