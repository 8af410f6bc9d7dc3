"""The l0tre command line (package ``l0tre_cli``)."""

from __future__ import annotations

from l0tre_cli.app import create_app, main
from l0tre_cli.options import Common, common_options

__all__ = ["Common", "common_options", "create_app", "main"]
