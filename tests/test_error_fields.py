"""The engine's errors name its parameters (``max_t``), and the command line shows the flags that
set them (``--max-t``) through one table, ``l0tre_cli.options.FLAGS``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import assert_one_line_error, invoke
from l0tre_cli.options import FLAGS, user_message
from l0tre_core import CardError, UsageError

ROOT = Path(__file__).resolve().parents[1]
# Python-side parameters no flag sets: a message naming one reads the same everywhere.
PYTHON_ONLY = {"chunk"}
NAMED = re.compile(r"`(\w+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def engine_files() -> list[Path]:
    core = [p for p in (ROOT / "l0tre_core").rglob("*.py") if "certify" not in p.parts]
    return sorted(core + list((ROOT / "backends").rglob("*.py")) + list((ROOT / "plugins" / "l0tre_formats").rglob("*.py")))


def error_calls(path: Path) -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
            if name.endswith(("Error", "Problem", "Contradiction", "Interrupted")) or name == "data_error":
                calls.append(node)
    return calls


def texts(call: ast.Call) -> str:
    return " ".join(n.value for n in ast.walk(call) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def test_engine_messages_name_fields_the_cli_knows_and_no_flags() -> None:
    problems = []
    for path in engine_files():
        where = path.relative_to(ROOT)
        for call in error_calls(path):
            text = texts(call)
            if FLAG.search(text):
                problems.append(f"{where}:{call.lineno}: names a flag: {text!r}")
            for name in NAMED.findall(text):
                if name not in FLAGS and name not in PYTHON_ONLY:
                    problems.append(f"{where}:{call.lineno}: names `{name}`, which no flag sets")
            for kw in call.keywords:
                if kw.arg == "field" and isinstance(kw.value, ast.Constant):
                    if kw.value.value not in FLAGS and kw.value.value not in PYTHON_ONLY:
                        problems.append(f"{where}:{call.lineno}: field {kw.value.value!r} has no flag")
    assert not problems, "\n".join(problems)


def test_the_cli_shows_each_named_field_as_its_flag() -> None:
    exc = UsageError("`n` 6 from `start` 3 asks for more samples than the data holds (5)", field="n")
    assert user_message(exc) == "--n 6 from --start 3 asks for more samples than the data holds (5)"
    exc = CardError("`mean` has 2 values but `std` has 3", hint="or set `range`", field="std")
    assert user_message(exc) == "--mean has 2 values but --std has 3 (or set --range)"
    assert user_message(UsageError("`chunk` must be positive")) == "`chunk` must be positive"
    assert FLAGS["max_t"] == "--max-t" and FLAGS["input_time_limit"] == "--input-time-limit"


def test_an_engine_error_reaches_the_user_with_the_flag() -> None:
    result = invoke(["robustness", "--n", "1", "--max-t", "0"])
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, contains="--max-t must be at least 1, got 0")
    result = invoke(["robustness", "--n", "1", "--seed", "-1"])
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, contains="--seed must be an integer")
