"""l0tre: how many pixels must change to flip a classifier's decision, with proven bounds."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("l0tre")
"""Decorate your plugin's hook functions with this marker."""

__all__ = ["__version__", "hookimpl"]
