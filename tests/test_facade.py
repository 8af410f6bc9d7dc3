"""The built-in plugins and backends use what a third party can: the engine through the façade
``l0tre_core`` (never ``l0tre_core.<submodule>``) and the command line through ``l0tre_cli.kit``
(never another ``l0tre_cli`` module). Imports inside a plugin's own package are free."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import l0tre_core

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("plugins", "backends")
CORE, CLI, KIT = "l0tre_core", "l0tre_cli", "l0tre_cli.kit"


def refused(module: str) -> bool:
    """Whether a plugin may not import ``module``: a core submodule, or any CLI module but the kit."""
    return module.startswith(CORE + ".") or (module.split(".")[0] == CLI and module != KIT)


def violations(source: str, where: str) -> list[str]:
    """``where:line: imports MODULE`` for every import of the core or the CLI other than the
    façade and the kit."""
    found = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in (CORE, CLI):
            # names from the package itself: façade names, or the kit; anything else is a submodule
            allowed = set(l0tre_core.__all__) if node.module == CORE else {"kit"}
            modules = [f"{node.module}.{alias.name}" for alias in node.names if alias.name not in allowed]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [f"{where}:{node.lineno}: imports {m} (use {CORE if m.startswith(CORE) else KIT})"
                  for m in modules if refused(m)]
    return found


def sources() -> list[Path]:
    files = sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 20, "the plugins and backends were not found"
    return files


def test_plugins_and_backends_import_only_the_facade_and_the_kit() -> None:
    found = [v for path in sources() for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("from l0tre_core.errors import UsageError", True),
        ("import l0tre_core.driver", True),
        ("from l0tre_core import contracts", True),
        ("from l0tre_cli.options import Common", True),
        ("from l0tre_cli import Common", True),
        ("import l0tre_cli.progress", True),
        ("from l0tre_core import UsageError, hookimpl", False),
        ("from l0tre_cli.kit import Common, search_options", False),
        ("from l0tre_cli import kit", False),
        ("import l0tre_core", False),
        ("from l0tre_attack.run import run_attack", False),
        ("from .run import run_attack", False),
    ],
)
def test_the_scan_sees_each_kind_of_import(line: str, bad: bool) -> None:
    found = violations(f"x = 1\n{line}\n", "plugin.py")
    assert bool(found) == bad, found
    if bad:
        assert found[0].startswith("plugin.py:2: imports ")


def test_every_facade_name_resolves() -> None:
    for name in l0tre_core.__all__:
        assert getattr(l0tre_core, name) is not None, name
    assert sorted(dir(l0tre_core)) == sorted(l0tre_core.__all__)


def test_the_kit_exports_what_it_lists() -> None:
    kit = importlib.import_module(KIT)
    for name in kit.__all__:
        assert getattr(kit, name) is not None, name
