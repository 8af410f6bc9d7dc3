"""Shared test set-up: ``tests/`` on sys.path (``from helpers import ...``) and a clean plugin env."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture(autouse=True)
def _plugin_autoload_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the installed plugins even when the caller's shell disabled autoloading."""
    monkeypatch.delenv("L0TRE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
