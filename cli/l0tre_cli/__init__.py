"""The l0tre command line (package ``l0tre_cli``).

Plugins take what they need from ``l0tre_cli.kit``; ``create_app`` and ``main`` are for running it.
"""

from __future__ import annotations

from l0tre_cli.app import create_app, main

__all__ = ["create_app", "main"]
