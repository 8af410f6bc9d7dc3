"""The front door (issue #11): defaults that finish, the cost estimates, the live view, partial
results on stdout after Ctrl-C without --out, result files with the user's umask, help that shows
choices, half-configurations refused as usage errors, and the README's Python snippet."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import DEMO_DATA, REPO, assert_one_line_error, invoke, l0tre_cmd, write_npz
from l0tre_core import CHECKPOINT_NAME, BoundUpdate
from l0tre_core.results import atomic_write
from l0tre_robustness import cost

USAGE, INTERRUPTED = 2, 130


# --- 1. defaults that finish, and what going further costs -------------------------------------------------


def json_run(args: list[Any]) -> dict[str, Any]:
    result = invoke(["robustness", *args, "--time-limit", "0.001", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_bare_robustness_takes_a_sample_of_the_demo() -> None:
    assert cost.DEMO_N == 20
    assert json_run([])["data"]["inputs"] == cost.DEMO_N
    assert json_run(["--n", "3"])["data"]["inputs"] == 3


def test_with_data_every_input_is_used(tmp_path: Path) -> None:
    with np.load(DEMO_DATA) as d:
        data = write_npz(tmp_path / "d.npz", d["x"][:cost.DEMO_N + 7], d["y"][:cost.DEMO_N + 7])
    assert json_run(["--data", data])["data"]["inputs"] == cost.DEMO_N + 7


def test_estimate_arithmetic() -> None:
    assert cost.evaluations(20, 784, 2, 1) == 20 * 784 * 2
    assert cost.evaluations(1, 784, 2, 2) == 784 * 2 + math.comb(784, 2) * 4
    assert cost.evaluations(3, 100, 8, 3, first_t=3) == 3 * math.comb(100, 3) * 8**3
    line = cost.estimate_line(20, 784, 2, 2, rate=1000.0)
    count = cost.evaluations(20, 784, 2, 2)
    assert f"{count:.3g} evaluations" in line and "C(784, 2) x 2^2" in line
    assert cost.duration(count / 1000.0) in line
    assert cost.duration(30) == "30 s" and cost.duration(600) == "10 min" and cost.duration(7200) == "2.0 h"
    further = cost.further_line(inputs=20, total=500, seconds=10.0, units=784, values=2, max_t=1, rate=1000.0,
                                certify_seconds=10.0)
    assert "--n 500" in further and cost.duration(10.0 / 20 * 500) in further
    assert "--max-t 2" in further
    assert f"up to about {cost.duration(10.0 + 20 * math.comb(784, 2) * 4 / 1000.0 + 20 * 10.0)}" in further
    # without certificates the enumeration always runs: an estimate, not a ceiling
    assert "(about " in cost.further_line(inputs=5, total=5, seconds=1.0, units=10, values=2, max_t=1, rate=1e6)
    assert "--n" not in cost.further_line(inputs=5, total=5, seconds=1.0, units=10, values=2, max_t=1, rate=1e6)


def test_measured_rate_is_positive() -> None:
    from l0tre_core import load_data, load_model

    model = load_model(None)
    data = load_data(None, model.geometry, model.card.range, n=1)
    assert 0 < cost.measure_rate(model, data.x) < math.inf


def test_large_runs_say_their_cost_first_and_every_table_run_says_how_to_go_further() -> None:
    result = invoke(["robustness", "--max-t", "3", "--time-limit", "0.001"])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("estimated cost: 20 inputs x (C(784, 1) x 2^1 + C(784, 2) x 2^2 + C(784, 3) x 2^3)")
    assert lines[-1].startswith("to go further: all 500 inputs with --n 500") and "--max-t 4" in lines[-1]
    small = invoke(["robustness", "--n", "2", "--time-limit", "0.001"])
    assert "estimated cost" not in small.stderr and "to go further" in small.stderr
    for quiet in (["-q"], ["--format", "json"]):
        assert "to go further" not in invoke(["robustness", "--n", "2", "--time-limit", "0.001", *quiet]).stderr


# --- 2. live view ------------------------------------------------------------------------------------------------


def event(index: int, done: int, phase: str = "level", finished: bool = False, guarantee: str = "sound") -> BoundUpdate:
    return BoundUpdate(index=index, position=index, lower=2, upper=7, guarantee=guarantee, level=1, evaluations=1000,
                       seconds=0.5, finished=finished, global_lower=1.5, global_upper=None, done=done, total=5,
                       phase=phase, working=1)


def test_plain_lines_show_phase_rate_and_guarantee_mix_and_the_final_line_once(monkeypatch: pytest.MonkeyPatch,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from l0tre_cli import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    with progress.InputProgress("run", 5) as view:
        view(event(0, 0, "certify"), None)
        view(event(0, 1, finished=True), None)
        view(event(1, 1, "sweep", guarantee="discrete"), None)
    lines = capsys.readouterr().err.splitlines()
    assert "t=1 certify" in lines[0] and "2,000 evals/s" in lines[0]
    assert "[1 discrete, 1 sound]" in lines[-1] and "t=1 sweep" in lines[-1]
    assert len(lines) == 3  # the final state was shown already: not printed twice


def test_resumed_inputs_are_said_once_and_counted_done(capsys: pytest.CaptureFixture[str]) -> None:
    from l0tre_cli.progress import InputProgress

    with InputProgress("run", 5, resumed=True) as view:
        view(event(3, 3, "sweep"), None)
        view(event(3, 4, finished=True), None)
    err = capsys.readouterr().err
    assert err.count("resumed 3 finished inputs") == 1
    assert "4/5 inputs" in err


# --- 3. Ctrl-C and SIGTERM without --out ---------------------------------------------------------------------------

MARKER_PLUGIN = '''
import os
from l0tre_core import hookimpl

@hookimpl
def l0tre_bounds_updated(update):
    if update.recorded:
        open(os.environ["L0TRE_TEST_MARK"], "a").close()
'''


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "fmt"), [(signal.SIGINT, "table"), (signal.SIGTERM, "json")], ids=["SIGINT-table", "SIGTERM-json"])
def test_signal_without_out_prints_the_partial_results(tmp_path: Path, signum: int, fmt: str) -> None:
    (tmp_path / "l0tre_test_marker.py").write_text(MARKER_PLUGIN)
    mark = tmp_path / "mark"
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb", L0TRE_TEST_MARK=str(mark))
    env.pop("L0TRE_DISABLE_PLUGIN_AUTOLOAD", None)
    # t = 2 on the demo takes minutes: it is still running when the signal comes
    args = ["-p", "l0tre_test_marker", "robustness", "--n", "3", "--max-t", "2", "--lower", "discrete",
            "--device", "cpu", "--format", fmt, "-q"]
    proc = subprocess.Popen([*l0tre_cmd(), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no step finished"
        time.sleep(0.01)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == INTERRUPTED, stderr
    assert_one_line_error(stderr, contains=["interrupted", "partial results"])
    if fmt == "json":
        report = json.loads(stdout)
        assert report["complete"] is False and len(report["samples"]) == 3
    else:
        assert "global robustness (mean d* over 3 inputs)" in stdout


# --- 4. files with the user's umask ----------------------------------------------------------------------------


def test_result_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "r.json", lambda fh: fh.write("{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


# --- 5. help ------------------------------------------------------------------------------------------------------------


def help_text(*command: str) -> str:
    from typer.testing import CliRunner

    from l0tre_cli import create_app

    result = CliRunner().invoke(create_app(), [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    return result.stdout


def test_help_shows_choices_and_seconds() -> None:
    text = help_text("robustness")
    for choices in ("[table|json]", "[pixel|feature]", "[prediction|label]", "[margin|logit]", "[nchw|nhwc|flat]",
                    "[logits|probs]"):
        assert choices in text, choices
    for flag in ("--time-limit", "--input-time-limit", "--certify-time"):
        line = next(line for line in text.splitlines() if f"{flag} " in line)
        assert "seconds" in line, line
    assert "<str>  Results" not in text


def test_options_a_command_ignores_are_not_offered() -> None:
    info = help_text("info")
    assert "--out " not in info and "-o " not in info and "--seed" not in info
    for command in ("saliency", "testgen"):
        assert "--seed" not in help_text(command)
    for command in ("robustness", "attack", "design"):
        assert "--seed" in help_text(command)
    assert invoke(["info", "--seed", "1"]).exit_code == USAGE


# --- 6. half-configurations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--mean", "0.1"], ["--std", "0.3"]])
def test_mean_without_std_is_a_usage_error(flags: list[str]) -> None:
    result = invoke(["info", *flags])
    assert result.exit_code == USAGE
    assert_one_line_error(result.stderr, contains=["--mean", "--std"])


def test_resume_into_a_folder_without_a_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["robustness", "--n", "1", "--out", tmp_path / "empty", "--resume", "-q"])
    assert result.exit_code == USAGE, result.stderr
    assert_one_line_error(result.stderr, contains=["--out", "no checkpoint"])
    assert not (tmp_path / "empty" / CHECKPOINT_NAME).exists()


def test_singular_wording() -> None:
    result = invoke(["robustness", "--n", "1", "-q"])
    assert result.exit_code == 0, result.stderr
    assert "over 1 input)" in result.stdout
    assert "1 channel," in invoke(["info"]).stdout


# --- 7. the README's Python snippet --------------------------------------------------------------------------------


def test_readme_python_snippet_runs_as_written(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None
    code = snippet.group(1)
    assert "listeners=[show]" in code and "BoundUpdate, " in code and "SampleState" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("input ") for line in lines) == 5, proc.stdout
    assert len(lines) == 5 + 1 + 5
