"""Plugins: listing, ``-p`` modules, entry points of an installed distribution, blocking, clashes.

The example plugin lives in tests/plugin_example/. Installing a distribution is simulated with a
``*.dist-info`` folder on PYTHONPATH, which importlib.metadata discovers like an installed one, so
the test environment itself is never changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import DEMO_MODEL, assert_one_line_error, invoke, run_l0tre
from l0tre_core.errors import PluginError
from l0tre_core.host import create_host

EXAMPLE_DIR = Path(__file__).resolve().parent / "plugin_example"
BUILTIN = {"onnxruntime", "formats", "robustness"}


def command_names(help_text: str) -> set[str]:
    """The command names in the command panels (Applications, Model and plugins, ...) of ``l0tre --help``."""
    names = set()
    panel = None
    for line in help_text.splitlines():
        if line.startswith("\u256d\u2500 "):
            panel = line[3:].split(" \u2500", 1)[0].strip()
        # "│ info   Show the ..." starts a command; "│        wrapped help" continues one.
        elif panel not in (None, "Options") and line.startswith("\u2502 ") and len(line) > 2 and line[2] not in " \u2502":
            names.add(line[2:].split()[0])
    return names


# --- l0tre plugins --------------------------------------------------------------------------------------


def test_plugins_table_lists_the_builtin_plugins() -> None:
    result = invoke(["plugins"])
    assert result.exit_code == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert BUILTIN <= names
    assert "l0tre-core" in names


def test_plugins_json() -> None:
    result = invoke(["plugins", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert BUILTIN <= set(rows)
    for row in rows.values():
        assert set(row) >= {"name", "version", "distribution", "hooks", "module"}
        assert all(h.startswith("l0tre_") for h in row["hooks"])
    assert rows["onnxruntime"]["hooks"] == ["l0tre_register_backends"]
    assert rows["formats"]["hooks"] == ["l0tre_register_data_formats"]
    assert rows["robustness"]["hooks"] == ["l0tre_register_commands"]
    for name in BUILTIN:  # built-in plugins come from our own distribution's entry points
        assert rows[name]["distribution"] == "l0tre"
        assert rows[name]["version"] == "0.1.0"
        assert rows[name]["module"] == f"l0tre_{name}"
    assert rows["l0tre-core"]["distribution"] is None


def test_plugins_bad_format() -> None:
    result = invoke(["plugins", "--format", "xml"])
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, contains="--format")


def test_help_lists_builtin_and_plugin_commands() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    assert {"info", "plugins", "robustness"} <= command_names(result.stdout)


def test_version() -> None:
    import l0tre_core

    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"l0tre {l0tre_core.__version__}"


# --- a local plugin module given with -p ------------------------------------------------------------------


def test_p_module_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    helped = invoke(["--help"], plugins=["l0tre_example_plugin"])
    assert {"hello", "count-classes", "robustness"} <= command_names(helped.stdout)

    result = invoke(["hello", "--name", "tester"], plugins=["l0tre_example_plugin"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "hello, tester, from the example plugin"

    # A plugin command built with common_options gets the model argument and the error handling.
    result = invoke(["count-classes", DEMO_MODEL], plugins=["l0tre_example_plugin"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "classes: 10"
    result = invoke(["count-classes", "no-such-model.onnx"], plugins=["l0tre_example_plugin"])
    assert result.exit_code == 3
    assert_one_line_error(result.stderr, contains="not found")

    rows = {r["name"]: r for r in create_host(["l0tre_example_plugin"]).plugin_info()}
    assert rows["l0tre_example_plugin"]["hooks"] == ["l0tre_register_commands"]
    assert rows["l0tre_example_plugin"]["distribution"] is None
    assert rows["l0tre_example_plugin"]["version"] == "0.0.1"


def test_p_module_from_current_folder() -> None:
    """``main()`` puts '.' on sys.path, so a module beside the user is found, as pytest's -p does."""
    proc = run_l0tre(["-p", "l0tre_example_plugin", "--help"], cwd=EXAMPLE_DIR)
    assert proc.returncode == 0, proc.stderr
    assert "hello" in command_names(proc.stdout)
    proc = run_l0tre(["-p", "l0tre_example_plugin", "hello"], cwd=EXAMPLE_DIR)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello, world, from the example plugin"
    proc = run_l0tre(["--plugin=l0tre_example_plugin", "plugins", "-f", "json"], cwd=EXAMPLE_DIR)
    assert proc.returncode == 0, proc.stderr
    assert "l0tre_example_plugin" in {r["name"] for r in json.loads(proc.stdout)}


def test_p_module_elsewhere_is_not_found(tmp_path: Path) -> None:
    proc = run_l0tre(["-p", "l0tre_example_plugin", "hello"], cwd=tmp_path)
    assert proc.returncode == 3
    assert_one_line_error(proc.stderr, contains="l0tre_example_plugin")


def test_p_unknown_module() -> None:
    proc = run_l0tre(["-p", "does_not_exist", "plugins"])
    assert proc.returncode == 3
    assert_one_line_error(proc.stderr, contains=["does_not_exist", "-p"])
    with pytest.raises(PluginError):
        create_host(["does_not_exist"])


def test_p_of_an_already_loaded_plugin_is_harmless() -> None:
    result = invoke(["--help"], plugins=["l0tre_robustness"])
    assert result.exit_code == 0
    assert "robustness" in command_names(result.stdout)


# --- blocking -----------------------------------------------------------------------------------------


def test_block_robustness() -> None:
    result = invoke(["--help"], plugins=["no:robustness"])
    assert result.exit_code == 0
    names = command_names(result.stdout)
    assert "robustness" not in names and {"info", "plugins"} <= names
    listed = {r["name"] for r in json.loads(invoke(["plugins", "-f", "json"], plugins=["no:robustness"]).stdout)}
    assert "robustness" not in listed and "formats" in listed

    proc = run_l0tre(["-p", "no:robustness", "robustness"])
    assert proc.returncode == 2  # no such command: a usage error


def test_block_backend_then_info_fails_cleanly() -> None:
    result = invoke(["info"], plugins=["no:onnxruntime"])
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, contains="onnxruntime")


def test_core_plugin_cannot_be_blocked() -> None:
    proc = run_l0tre(["-p", "no:l0tre-core", "plugins"])
    assert proc.returncode == 3
    assert_one_line_error(proc.stderr, contains="l0tre-core")


def test_autoload_disabled_loads_only_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L0TRE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert {r["name"] for r in create_host().plugin_info()} == {"l0tre-core"}
    # ... and -p brings plugins back one by one.
    host = create_host(["l0tre_onnxruntime", "l0tre_formats"])
    assert set(host.registry("backends")) == {"onnxruntime"}
    result = invoke(["info", "--n", "20", "-f", "json"], plugins=["l0tre_onnxruntime", "l0tre_formats"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["data"]["samples"] == 20


# --- clashes --------------------------------------------------------------------------------------------


def test_two_plugins_register_the_same_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    result = invoke(["info"], plugins=["l0tre_dup_backend"])
    assert result.exit_code == 3
    line = assert_one_line_error(result.stderr, contains="onnxruntime")
    assert "'onnxruntime'" in line and "'l0tre_dup_backend'" in line  # names both plugins
    with pytest.raises(PluginError, match="l0tre_dup_backend"):
        create_host(["l0tre_dup_backend"]).registry("backends")
    # Blocking the built-in one leaves the other (and nothing clashes any more).
    host = create_host(["l0tre_dup_backend", "no:onnxruntime"])
    assert host.owner("backends", "onnxruntime") == "l0tre_dup_backend"


def test_two_plugins_register_the_same_backend_subprocess() -> None:
    proc = run_l0tre(["-p", "l0tre_dup_backend", "info"], cwd=EXAMPLE_DIR)
    assert proc.returncode == 3
    line = assert_one_line_error(proc.stderr)
    assert "'onnxruntime'" in line and "'l0tre_dup_backend'" in line


def test_plugin_command_named_like_a_builtin_one() -> None:
    proc = run_l0tre(["-p", "l0tre_dup_command", "info"], cwd=EXAMPLE_DIR)
    assert proc.returncode == 3
    line = assert_one_line_error(proc.stderr, contains="'info'")
    assert "l0tre_dup_command" in line and "built-in" in line


# --- a distribution installed with an entry point (simulated with a dist-info folder) ------------------


@pytest.fixture
def installed_example(tmp_path: Path) -> Path:
    """A site folder holding the example plugin and the metadata of distribution l0tre-example 1.2.3."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "l0tre_example_plugin.py").write_text((EXAMPLE_DIR / "l0tre_example_plugin.py").read_text())
    info = site / "l0tre_example-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: l0tre-example\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[l0tre]\nexample = l0tre_example_plugin\n")
    (info / "top_level.txt").write_text("l0tre_example_plugin\n")
    return site


def test_entry_point_plugin_is_discovered(installed_example: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(installed_example)}
    proc = run_l0tre(["--help"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {"hello", "count-classes", "robustness"} <= command_names(proc.stdout)

    proc = run_l0tre(["hello"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "from the example plugin" in proc.stdout

    proc = run_l0tre(["plugins", "--format", "json"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["example"]["distribution"] == "l0tre-example"
    assert rows["example"]["version"] == "1.2.3"
    assert rows["example"]["hooks"] == ["l0tre_register_commands"]
    assert BUILTIN <= set(rows)

    table = run_l0tre(["plugins"], env=env, cwd=tmp_path).stdout
    row = next(line for line in table.splitlines() if line.split() and line.split()[0] == "example")
    assert "1.2.3" in row and "l0tre-example" in row


def test_entry_point_plugin_blocked_or_autoload_off(installed_example: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(installed_example)}
    proc = run_l0tre(["-p", "no:example", "--help"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = command_names(proc.stdout)
    assert "hello" not in names and "robustness" in names

    off = {**env, "L0TRE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = run_l0tre(["--help"], env=off, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = command_names(proc.stdout)
    assert "hello" not in names and "robustness" not in names and "info" in names
    proc = run_l0tre(["plugins", "-f", "json"], env=off, cwd=tmp_path)
    assert [r["name"] for r in json.loads(proc.stdout)] == ["l0tre-core"]
    # With autoload off, -p still loads the module (and it is then a local plugin).
    proc = run_l0tre(["-p", "l0tre_example_plugin", "hello"], env=off, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_broken_entry_point_is_one_line_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "l0tre_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: l0tre-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[l0tre]\nbroken = l0tre_module_that_is_missing\n")
    proc = run_l0tre(["--help"], env={"PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 3
    assert_one_line_error(proc.stderr, contains="l0tre_module_that_is_missing")
    # It can be blocked by its entry-point name.
    proc = run_l0tre(["-p", "no:broken", "plugins"], env={"PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_the_applications_with_robustness_first() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    text = result.stdout
    panel = text.split("Applications", 1)[1]
    first = next(line for line in panel.splitlines() if line.startswith("\u2502 "))
    assert first[2:].split()[0] == "robustness"
    assert text.index("Applications") < text.index("Model and plugins")
    assert {"robustness", "attack", "saliency", "testgen", "design", "info", "plugins"} <= command_names(text)
