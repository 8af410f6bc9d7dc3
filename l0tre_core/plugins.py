"""The plugin host's former module name, kept only while ``tests/test_soundness_harness.py`` and
``benchmarks/soundness.py`` still import ``create_host`` from here: use ``from l0tre_core import
create_host`` (the host itself is ``l0tre_core.host``). Delete this module once they do."""

from __future__ import annotations

from l0tre_core.host import create_host

__all__ = ["create_host"]
