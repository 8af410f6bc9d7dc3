"""``l0tre report``: one self-contained HTML page per set of result folders, checked without a
browser (parsed with the standard library): every part present, the numbers those of
``results.json``, nothing fetched from elsewhere; bad folders are one-line usage errors."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, invoke, run_l0tre

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of a page the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[tuple[str | None, str]]]] = {}  # id -> rows of (data-v, text)
        self.headers: dict[str, list[str]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: tuple[str | None, list[str]] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table" and "sortable" in (a.get("class") or ""):
            self._table = a.get("id") or "?"
            self.tables[self._table], self.headers[self._table] = [], []
        elif self._table and tag == "thead":
            self._in_head = True
        elif self._table and tag == "tbody":
            self._in_head = False
        elif self._table and tag == "tr" and not self._in_head:
            self.tables[self._table].append([])
        elif self._table and tag in ("td", "th"):
            self._cell = (a.get("data-v"), [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            text = "".join(self._cell[1]).strip()
            if self._in_head:
                self.headers[self._table].append(text)
            else:
                self.tables[self._table][-1].append((self._cell[0], text))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell[1].append(data)

    def column(self, table: str, name: str) -> list[tuple[str | None, str]]:
        k = self.headers[table].index(name)
        return [row[k] for row in self.tables[table]]

    def all_text(self) -> str:
        return " ".join(self.text)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One result folder per application, on the demo (small and fast settings)."""
    root = tmp_path_factory.mktemp("runs")
    commands = {
        "robustness": ["robustness", "--n", "4", "--lower", "discrete", "--upper", "none"],
        "attack": ["attack", "--n", "4", "--budget", "200"],
        "saliency": ["saliency", "--n", "3"],
        "testgen": ["testgen", "--n", "4", "--max-l0", "4"],
    }
    out = {}
    for name, args in commands.items():
        folder = root / name
        result = invoke([*args, "--out", folder, "-q"])
        assert result.exit_code == 0, (name, result.stderr)
        out[name] = folder
    return out


def check_self_contained(page: Page) -> None:
    """No resource from outside the page: every image is an inline PNG, no stylesheet or script file."""
    for tag, a in page.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        if tag == "script":
            assert "src" not in a
        if tag == "img":
            src = a["src"] or ""
            assert src.startswith("data:image/png;base64,"), src[:60]
            assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
        for key in ("src", "href"):
            value = a.get(key) or ""
            assert not value.startswith(("http:", "https:", "//", "file:")), value


@pytest.mark.parametrize("name", ["robustness", "attack", "saliency", "testgen"])
def test_report_of_each_application(runs: dict[str, Path], name: str) -> None:
    folder = runs[name]
    result = invoke(["report", folder, "-q"])
    assert result.exit_code == 0, result.stderr
    page = parse(folder / "report.html")
    check_self_contained(page)
    doc = json.loads((folder / "results.json").read_text())
    text = page.all_text()
    for part in ("Summary", "Per input", "Model card", "Run settings", "Versions", "Images"):
        assert part in text, part
    assert doc["model"]["path"] in text and doc["versions"]["onnxruntime"] in text
    # the per-input table: one row per sample, its numbers those of results.json, sortable by value
    rows = page.tables["t-run-1"]
    assert len(rows) == len(doc["samples"])
    assert [float(v) for v, _ in page.column("t-run-1", "index")] == [float(s["index"]) for s in doc["samples"]]
    key = {"robustness": "upper", "attack": "l0", "saliency": "evaluations", "testgen": "cases"}[name]
    assert [float(v) for v, _ in page.column("t-run-1", key)] == [float(s[key]) for s in doc["samples"]]
    # the pictures: every pictured input has its clean image found again from the demo data
    alts = [a.get("alt") or "" for tag, a in page.tags if tag == "img"]
    if name == "saliency":
        assert sum(alt.startswith("saliency #") for alt in alts) == len(doc["samples"])
    else:
        assert sum(alt.startswith("adversarial #") for alt in alts) >= 1
        assert sum(alt.startswith("clean #") for alt in alts) == sum(alt.startswith("adversarial #") for alt in alts)
    if name in ("robustness", "attack", "testgen"):
        assert sum(tag == "svg" for tag, _ in page.tags) >= 1  # convergence / success / coverage chart


def test_witness_changed_pixels_are_the_witness(runs: dict[str, Path]) -> None:
    """The "N changed" caption of an attack's witness is its L0 as results.json records it."""
    folder = runs["attack"]
    assert invoke(["report", folder, "--out", folder / "r.html", "-q"]).exit_code == 0
    page = parse(folder / "r.html")
    changed = [int((a.get("alt") or "").split()[0]) for tag, a in page.tags
               if tag == "img" and (a.get("alt") or "").split(" ")[1:2] == ["changed"]]
    doc = json.loads((folder / "results.json").read_text())
    assert changed == [s["l0"] for s in doc["samples"] if s["success"]]


def test_comparison_of_several_folders(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "all.html"
    result = invoke(["report", *runs.values(), "--out", out, "--max-images", "1", "-q"])
    assert result.exit_code == 0, result.stderr
    page = parse(out)
    check_self_contained(page)
    assert "Comparison" in page.all_text()
    assert [text for _, text in page.column("compare", "command")] == list(runs)
    per_input = page.tables["compare-inputs"]
    robust = json.loads((runs["robustness"] / "results.json").read_text())
    uppers = dict(zip((v for v, _ in page.column("compare-inputs", "index")), page.column("compare-inputs", "robustness upper")))
    for s in robust["samples"]:
        assert float(uppers[repr(float(s["index"]))][0]) == float(s["upper"])
    assert len(per_input) >= len(robust["samples"])
    # --max-images 1: one pictured input per run
    alts = [a.get("alt") or "" for tag, a in page.tags if tag == "img"]
    assert sum(alt.startswith("adversarial #") for alt in alts) == 3


def test_sorting_keys_are_numbers(runs: dict[str, Path]) -> None:
    folder = runs["robustness"]
    assert invoke(["report", folder, "-q"]).exit_code == 0
    html = (folder / "report.html").read_text()
    assert "aria-sort" in html and "addEventListener('click'" in html
    keys = [v for v, _ in parse(folder / "report.html").column("t-run-1", "seconds")]
    assert all(isinstance(float(k), float) for k in keys)


def test_clean_inputs_missing_are_said(runs: dict[str, Path], tmp_path: Path) -> None:
    """A run whose data cannot be found again still gets its adversarial images, and a note why
    the clean ones are missing."""
    folder = tmp_path / "moved"
    folder.mkdir()
    doc = json.loads((runs["attack"] / "results.json").read_text())
    doc["data"]["source"] = "elsewhere.npz"
    (folder / "results.json").write_text(json.dumps(doc))
    (folder / "adversarial.npz").write_bytes((runs["attack"] / "adversarial.npz").read_bytes())
    assert invoke(["report", folder, "-q"]).exit_code == 0
    page = parse(folder / "report.html")
    assert "give --data FILE" in page.all_text()
    alts = [a.get("alt") or "" for tag, a in page.tags if tag == "img"]
    assert not any(alt.startswith("clean #") for alt in alts) and any(alt.startswith("adversarial #") for alt in alts)


def bad_folders(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    doc = json.loads((good / "results.json").read_text())
    del doc["summary"]
    (wrong / "results.json").write_text(json.dumps(doc))
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"schema_version": 1}))
    afile = tmp_path / "afile"
    afile.write_text("x")
    return {
        "missing": (tmp_path / "nope", "not found"),
        "no results": (empty, "holds no results.json"),
        "not json": (broken, "not valid JSON"),
        "schema": (wrong, "summary"),
        "old version": (old, "schema_version"),
        "a file": (afile, "not a folder"),
    }


def test_bad_folders_are_usage_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    for what, (path, message) in bad_folders(tmp_path, runs["saliency"]).items():
        result = invoke(["report", runs["saliency"], path, "--out", tmp_path / "x.html"])
        assert result.exit_code == 2, (what, result.stdout, result.stderr)
        assert_one_line_error(result.stderr, contains=message)
    assert not (tmp_path / "x.html").exists()  # nothing is written when any folder is bad


def test_bad_folder_in_a_child_process(tmp_path: Path) -> None:
    done = run_l0tre(["report", tmp_path / "nowhere"])
    assert done.returncode == 2
    assert_one_line_error(done.stderr, contains="result folder not found")


def test_png_helpers_round_trip() -> None:
    from l0tre_report.images import to_hwc

    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # N, C, H, W with C = 3
    hwc = to_hwc(x, (4, 5, 3))
    assert hwc.shape == (2, 4, 5, 3) and hwc[1, 2, 3, 1] == x[1, 1, 2, 3]
    flat = to_hwc(np.zeros((1, 784), np.float32), (28, 28, 1))
    assert flat.shape == (1, 28, 28, 1)


def test_design_run_and_explicit_data(tmp_path: Path) -> None:
    """A design run shows its claims, ranking and intervals; a run on a user's data file that is not
    beside the folder gets its clean images from --data (matched by the file name)."""
    from test_design import linear_model

    from helpers import write_npz

    fragile = linear_model(tmp_path / "fragile.onnx", np.eye(16)[0] * 10.0, -5.0)
    robust = linear_model(tmp_path / "robust.onnx", np.ones(16), -8.0)
    (tmp_path / "elsewhere").mkdir()
    data = write_npz(tmp_path / "elsewhere" / "d.npz", np.full((3, 16), 0.1, np.float32), np.zeros(3, np.int64))
    out = tmp_path / "runs" / "design"
    result = invoke(["design", fragile, robust, "--data", data, "--layout", "flat", "--max-t", "1", "--out", out, "-q"])
    assert result.exit_code == 0, result.stderr
    att = tmp_path / "runs" / "attack"
    result = invoke(["attack", fragile, "--data", data, "--layout", "flat", "--budget", "50", "--out", att, "-q"])
    assert result.exit_code == 0, result.stderr
    page_file = tmp_path / "r.html"
    assert invoke(["report", out, att, "--out", page_file, "-q"]).exit_code == 0
    page = parse(page_file)
    text = page.all_text()
    doc = json.loads((out / "results.json").read_text())
    assert "Claims" in text and doc["claims"][0]["text"] in text
    assert [t for _, t in page.column("r-run-1", "name")] == [r["name"] for r in doc["summary"]["ranking"]]
    assert any(tag == "svg" and "intervals" in (a.get("aria-label") or "") for tag, a in page.tags)
    alts = [a.get("alt") or "" for tag, a in page.tags if tag == "img"]
    assert not any(alt.startswith("clean #") for alt in alts) and "give --data FILE" in text
    assert invoke(["report", out, att, "--out", page_file, "--data", data, "-q"]).exit_code == 0
    alts = [a.get("alt") or "" for tag, a in parse(page_file).tags if tag == "img"]
    assert any(alt.startswith("clean #") for alt in alts)
