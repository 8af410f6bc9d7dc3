"""The example third-party package (examples/l0tre_example) and the plugin guide (docs/plugins.md).

The package is installed once per module into a temporary folder (``pip install --target``), never
into the test environment; ``l0tre`` then runs as a child process with that folder on PYTHONPATH,
where ``importlib.metadata`` finds the package's dist-info and its ``l0tre`` entry point exactly as
it would find an installed distribution.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "l0tre_example"
GUIDE = REPO / "docs" / "plugins.md"
DEMO = REPO / "l0tre_core" / "demo"
FACADE_IMPORTS = {"l0tre_core", "l0tre_cli.kit"}  # all a plugin may import from l0tre
OLD_PATHS = ("bounds", "search", "plugins", "builtin", "sound")  # module names being retired


# --- installing the example -------------------------------------------------------------------------


def _pip_install(src: Path, target: Path, isolation: bool) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
           "--quiet", "--target", str(target), str(src)]
    if not isolation:
        cmd.insert(4, "--no-build-isolation")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _install_by_hand(src: Path, target: Path) -> None:
    """What pip writes for a pure-Python package: the package and a dist-info with the entry
    points of pyproject.toml (used only when pip cannot build here, e.g. offline without wheel)."""
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    shutil.copytree(src / "l0tre_example", target / "l0tre_example")
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the example package is installed into (put it on PYTHONPATH to use it)."""
    base = tmp_path_factory.mktemp("example")
    src = base / "src"  # build from a copy: pip builds in-tree and would leave build/ in the repo
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    errors = []
    for isolation in (False, True):  # no isolation needs setuptools and wheel here; isolation, an index
        shutil.rmtree(target, ignore_errors=True)
        try:
            done = _pip_install(src, target, isolation)
        except subprocess.TimeoutExpired:
            errors.append("pip timed out")
            continue
        if done.returncode == 0:
            break
        errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    else:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        _install_by_hand(src, target)
    assert any(target.glob("l0tre_example-*.dist-info/entry_points.txt")), errors
    return target


def l0tre(site: Path, *args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("L0TRE_DISABLE_PLUGIN_AUTOLOAD", None)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), full.get("PYTHONPATH", "")) if p)
    full.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **(env or {}))
    return subprocess.run([sys.executable, "-m", "l0tre_cli", *map(str, args)], env=full, capture_output=True,
                          text=True, timeout=300)


# --- discovery -------------------------------------------------------------------------------------------


def test_plugins_lists_the_installed_example(installed: Path) -> None:
    done = l0tre(installed, "plugins", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    example = rows["example"]
    assert example["distribution"] == "l0tre-example" and example["version"] == "0.1.0"
    assert example["hooks"] == ["l0tre_bounds_updated", "l0tre_register_bound_methods", "l0tre_register_commands"]
    table = l0tre(installed, "plugins")
    assert table.returncode == 0 and "l0tre-example" in table.stdout


def test_methods_are_installed_by_name(installed: Path) -> None:
    # the usage errors for an unknown name list every installed method of that kind
    low = l0tre(installed, "robustness", "--lower", "no-such-method", "--n", "1")
    up = l0tre(installed, "robustness", "--upper", "no-such-method", "--n", "1")
    assert low.returncode == 2 and "grid3" in low.stderr, low.stderr
    assert up.returncode == 2 and "greedy-drop" in up.stderr, up.stderr


# --- the methods in a real run ----------------------------------------------------------------------------


def _demo_session() -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(DEMO / "mnist_cnn.onnx"), providers=["CPUExecutionProvider"])


def _predict(session: Any, images: np.ndarray) -> np.ndarray:
    logits = session.run(None, {session.get_inputs()[0].name: images.reshape(-1, 1, 28, 28).astype(np.float32)})[0]
    return np.argmax(logits, axis=1)


@pytest.fixture(scope="module")
def grid3_run(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    out = tmp_path_factory.mktemp("grid3-run")
    done = l0tre(installed, "robustness", "--lower", "grid3", "--upper", "greedy-drop", "--max-t", "1", "--n", "3",
                 "--format", "json", "--out", out, "--quiet", env={"L0TRE_EXAMPLE_TRACE": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), out, done.stderr


def test_grid3_bounds_are_correct(grid3_run: tuple[dict[str, Any], Path, str]) -> None:
    result, out, _ = grid3_run
    assert result["budget"]["lower"] == "grid3"
    assert "greedy-drop" in result["budget"]["upper"]
    samples = result["samples"]
    assert len(samples) == 3
    session = _demo_session()
    clean = np.load(DEMO / "mnist_heldout_500.npz")["x"][:3].astype(np.float32) / 255.0
    refs = _predict(session, clean)
    witnesses = np.load(out / "witnesses.npz")
    adv_of = dict(zip(witnesses["index"].tolist(), witnesses["x_adv"]))
    for s in samples:
        i = s["index"]
        assert s["guarantee"] in ("discrete", "none")
        assert s["reference"] == refs[i]
        if s["upper"] is None:
            continue
        assert s["lower"] <= s["upper"]
        # the witness really flips the label and changes exactly `upper` pixels: no witness is
        # smaller than the lower bound
        adv = adv_of[i].reshape(28, 28)
        assert int(np.sum(adv != clean[i])) == s["upper"] >= s["lower"]
        assert _predict(session, adv)[0] != refs[i]
    for s in samples:
        if s["lower_discrete"] >= 2:  # checked independently: no single pixel in {0, 1/2, 1} flips
            i = s["index"]
            batch = np.repeat(clean[i].reshape(1, -1), 3 * 784, axis=0)
            batch[np.arange(3 * 784), np.tile(np.arange(784), 3)] = np.repeat(np.array([0.0, 0.5, 1.0], np.float32), 784)
            assert np.all(_predict(session, batch) == refs[i])


def test_bounds_updated_hook_runs(grid3_run: tuple[dict[str, Any], Path, str]) -> None:
    _, _, stderr = grid3_run
    assert re.search(r"example: input 0 level 1: \d+ <= d\* <= (\d+|\?) \((discrete|none)\)", stderr), stderr


def test_grid3_refuses_a_value_set_it_does_not_cover(installed: Path) -> None:
    done = l0tre(installed, "robustness", "--lower", "grid3", "--values", "grid:5", "--n", "1", "--quiet")
    assert done.returncode == 2
    assert "grid3" in done.stderr and "Traceback" not in done.stderr


# --- the methods on a model small enough to reason about --------------------------------------------------


class _LinearContext:
    """A stand-in for the SearchContext with the members the example uses, over 6 one-channel units.

    Class 1's score is ``w . x``, class 0's is 2; the clean input (every unit 0.2) is class 0. Unit
    3 alone flips it at 0.5 and 1 (5 * 0.5 > 2); unit 5 at 1 makes the outputs NaN (not a flip).
    """

    def __init__(self) -> None:
        self.w = np.array([0.0, 0.0, 0.0, 5.0, 0.0, 0.0])
        self.x_units = np.full((6, 1), 0.2, np.float32)
        self.ref, self.chunk = 0, 4
        self.encoder = SimpleNamespace(n_units=6, channels=1)
        self.values = np.array([[0.0], [1.0]], np.float32)

    def _outputs(self, xu: np.ndarray) -> np.ndarray:  # [B, 6, 1] -> [B, 2]
        s1 = xu[..., 0] @ self.w
        out = np.stack([np.full(len(xu), 2.0), s1], axis=1)
        out[xu[:, 5, 0] == 1.0] = np.nan
        return out

    def run_changes(self, units: np.ndarray, values: np.ndarray) -> np.ndarray:
        xu = np.repeat(self.x_units[None], len(units), axis=0)
        np.put_along_axis(xu, units[..., None], values, axis=1)
        return self._outputs(xu)

    def verify(self, witness: Any) -> bool:
        adv = witness.apply(self.x_units)
        return bool(np.argmax(self._outputs(adv[None])[0]) != self.ref) and int(np.sum(adv != self.x_units)) == witness.size


@pytest.fixture(scope="module")
def example_module(installed: Path) -> Any:
    sys.path.insert(0, str(installed))
    try:
        import l0tre_example.methods as methods
    finally:
        sys.path.remove(str(installed))
    return methods


def test_grid3_proves_refutes_and_times_out(example_module: Any) -> None:
    from l0tre_core import ThreatModel

    certifier = example_module.Grid3().prepare(None, np.zeros((1, 6, 1)), ThreatModel(), 0)
    assert certifier.refusal() is None
    ctx = _LinearContext()
    cert = certifier.certify(ctx, 1, None)
    assert cert.status == "refuted" and cert.witness.units.tolist() == [3] and cert.witness.values.tolist() == [[0.5]]
    ctx.w[3] = 0.0  # nothing flips now; unit 5 at 1 gives NaN outputs, which are not flips
    assert certifier.certify(ctx, 1, None).status == "proven"
    assert certifier.certify(ctx, 2, 0.0).status == "timeout"  # a deadline long past


def test_greedy_drop_shrinks_a_witness(example_module: Any) -> None:
    from l0tre_core import Witness

    ctx = _LinearContext()
    w = Witness(np.array([0, 3, 4], np.int64), np.array([[1.0], [1.0], [0.0]], np.float32))
    state = SimpleNamespace(witness=w, upper=3)
    smaller = example_module.GreedyDrop().improve(ctx, state, 1, None, np.random.default_rng(0))
    assert smaller is not None and smaller.units.tolist() == [3] and ctx.verify(smaller)
    assert example_module.GreedyDrop().improve(ctx, SimpleNamespace(witness=smaller, upper=1), 1, None,
                                               np.random.default_rng(0)) is None


# --- the command --------------------------------------------------------------------------------------------


def test_example_stats(installed: Path) -> None:
    done = l0tre(installed, "example-stats", "--n", "5", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["inputs"] == 5 and report["classes"] == 10
    assert 0.0 <= report["accuracy"] <= 1.0
    table = l0tre(installed, "example-stats", "--n", "5")
    assert table.returncode == 0 and "5 inputs" in table.stdout
    bad = l0tre(installed, "example-stats", "--min-inputs", "-1")
    assert bad.returncode == 2 and bad.stderr.startswith("error:"), bad.stderr


# --- the guide and the façade rule ----------------------------------------------------------------------------


def test_guide_names_every_hook_and_contract() -> None:
    import l0tre_core.contracts as contracts
    import l0tre_core.hookspecs as hookspecs

    text = GUIDE.read_text()
    hooks = [name for name in vars(hookspecs) if name.startswith("l0tre_")]
    classes = [name for name, obj in vars(contracts).items()
               if isinstance(obj, type) and obj.__module__ == contracts.__name__ and not name.startswith("_")]
    assert len(hooks) >= 6 and len(classes) >= 10
    missing = [name for name in hooks + classes if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"docs/plugins.md does not mention {missing}"


def _imported(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_example_and_guide_import_only_the_facade() -> None:
    modules = set()
    for path in EXAMPLE.rglob("*.py"):
        modules |= _imported(path.read_text())
    text = GUIDE.read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        modules |= _imported(block)
    ours = {m for m in modules if m.startswith("l0tre") and not m.startswith("l0tre_example")}
    assert ours <= FACADE_IMPORTS, ours - FACADE_IMPORTS
    for old in OLD_PATHS:
        assert not re.search(rf"l0tre_(core|cli)[./]{old}\b", text), old
