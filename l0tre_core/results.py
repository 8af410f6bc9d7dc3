"""The results of a run, and the files they are written to (atomically: temp file, then rename)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from l0tre_core.witness import SampleState
from l0tre_core.errors import L0treError
from l0tre_core.schema import checked_result

from l0tre_core.schema import SCHEMA_VERSION, result_document  # noqa: F401  (SCHEMA_VERSION: kept importable here)


class SelfCheckFailed(L0treError):
    """A result failed its own consistency check (an internal error); nothing is written."""

    exit_code = 5


class OutputError(L0treError):
    """A result or checkpoint file cannot be written (disk full, permissions, a vanished folder).

    Exit code 3, as for an unwritable ``--out``: the files written before are left as they were.
    """

    exit_code = 3


@dataclass
class RunResult:
    model: dict[str, Any]
    threat: dict[str, Any]
    budget: dict[str, Any]
    data: dict[str, Any]
    samples: list[SampleState]
    seconds: float
    seed: int
    versions: dict[str, str]
    history: list[tuple[float, float, float | None]] = field(default_factory=list)
    complete: bool = True
    witness_images: dict[int, np.ndarray] = field(default_factory=dict)  # index -> data-file layout

    @property
    def global_lower(self) -> float:
        return float(np.mean([s.lower for s in self.samples])) if self.samples else 0.0

    @property
    def global_upper(self) -> float | None:
        ups = [s.upper for s in self.samples]
        return None if not ups or any(u is None for u in ups) else float(np.mean(ups))

    def check(self) -> None:
        """Refuse to report bounds that contradict each other."""
        for s in self.samples:
            if s.upper is not None and s.lower > s.upper:
                raise SelfCheckFailed(f"self-check failed: input {s.index} has lower {s.lower} > upper {s.upper}")
            if s.upper is not None and (s.witness is None or s.witness.size != s.upper):
                raise SelfCheckFailed(f"self-check failed: input {s.index} has no witness of size {s.upper}")

    def to_json(self) -> dict[str, Any]:
        """The result document (``l0tre_core.schema``): the ``global`` bounds are its ``summary``;
        ``budget`` and ``history`` (seconds, global lower, global upper) are robustness's own keys."""
        samples = []
        for s in self.samples:
            d = s.to_json()
            d.pop("witness")
            samples.append(d)
        guarantees = sorted({s.guarantee for s in self.samples})
        return result_document(
            "robustness",
            versions=self.versions,
            model=self.model,
            threat=self.threat,
            data=self.data,
            budget=self.budget,
            seed=self.seed,
            seconds=round(self.seconds, 3),
            complete=self.complete,
            history=[[round(t, 3), lo, up] for t, lo, up in self.history],
            summary={
                "lower": self.global_lower,
                "upper": self.global_upper,
                "guarantees": guarantees,
                "inputs": len(self.samples),
                "exact": sum(s.exact for s in self.samples),
                "exact_over_v": sum(s.exact_over_v for s in self.samples),
                "float32_band": sum(s.float32_band is not None for s in self.samples),
            },
            samples=samples,
        )


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``: a failure
    (disk full, kill) leaves the previous file intact. An OSError becomes an OutputError."""
    _commit([(_stage(path, write, binary), path)])


def _umask() -> int:
    """The process umask (read by setting it, and set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stage(path: Path, write: Callable[[Any], None], binary: bool = False) -> str:
    """Write ``path``'s new content to a synced temporary file beside it; returns its name.

    On failure nothing is left behind and the error is an OutputError (one line, exit 3)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: result files get the user's usual mode
    except BaseException as exc:
        _discard(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc} (the previous file is left as it was)") from None
        raise
    return tmp


def _commit(staged: list[tuple[str, Path]]) -> None:
    """Rename every staged temporary file over its target (temporaries left over are removed)."""
    try:
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in staged:
            _discard(tmp)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def write_results(result: RunResult, folder: Path, sample_shape: tuple[int, ...]) -> list[Path]:
    """``results.json``, ``samples.csv``, ``witnesses.npz`` and ``convergence.png`` in ``folder``.

    Every file is written to a temporary file first; only when all four are written and synced
    are they renamed into place, so a failure part-way (disk full) leaves the previous set intact.
    """
    result.check()
    document = checked_result(result.to_json())

    def write_csv(fh: Any) -> None:
        w = csv.writer(fh)
        w.writerow(["index", "label", "reference", "lower", "upper", "guarantee", "exact", "exact_over_v", "float32_band",
                    "evaluations", "seconds"])
        for s in result.samples:
            w.writerow([s.index, "" if s.label is None else s.label, s.reference, s.lower,
                        "" if s.upper is None else s.upper, s.guarantee, s.exact, s.exact_over_v,
                        "" if s.float32_band is None else s.float32_band, s.evaluations, f"{s.seconds:.3f}"])

    idx = sorted(result.witness_images)
    arrays = {
        "index": np.asarray(idx, np.int64),
        "x_adv": np.stack([result.witness_images[i] for i in idx]).astype(np.float32)
        if idx else np.zeros((0, *sample_shape), np.float32),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    png = convergence_png(result)
    files: list[tuple[Path, Callable[[Any], None], bool]] = [
        (folder / "results.json", lambda fh: json.dump(document, fh, indent=2), False),
        (folder / "samples.csv", write_csv, False),
        (folder / "witnesses.npz", lambda fh: fh.write(buf.getvalue()), True),
        (folder / "convergence.png", lambda fh: fh.write(png), True),
    ]
    staged: list[tuple[str, Path]] = []
    try:
        for path, write, binary in files:
            staged.append((_stage(path, write, binary), path))
    except BaseException:
        for tmp, _ in staged:
            _discard(tmp)
        raise
    _commit(staged)
    return [path for path, _, _ in files]


def lower_guarantee(guarantees: set[str]) -> str:
    """What a mean of lower bounds with these per-input guarantees is guaranteed to be, in words."""
    proven = guarantees - {"none"}
    if not proven:
        return "trivial: nothing proven yet"
    if proven == {"sound"}:
        return "sound" if "none" not in guarantees else "sound where proven"
    if proven == {"discrete"}:
        return "discrete: over the values V only"
    return "sound or discrete (over V), per input"


def convergence_points(result: RunResult) -> list[tuple[float, float, float | None]]:
    """The history drawn by ``convergence.png``: from time 0, where only the start is known (every
    input's lower bound 1, or 0 with no witness needed for a misclassified one), to the last step."""
    points = [(float(t), float(lo), None if up is None else float(up)) for t, lo, up in result.history]
    if not points or points[0][0] > 0:
        start = [0 if s.upper == 0 else SampleState.lower_sound for s in result.samples]
        lower = float(np.mean(start)) if start else 0.0
        upper = 0.0 if start and not any(start) else None
        points.insert(0, (0.0, lower, upper))
    return points


def convergence_png(result: RunResult) -> bytes:
    """``convergence.png``: the global lower and upper bound after every finished step, from the
    start of the run (a resumed run's history includes the steps before the resume)."""
    from l0tre_core.figures import png, pyplot

    lower_colour, upper_colour = "#1f5fa8", "#d1495b"
    points = convergence_points(result)
    end = max(points[-1][0], result.seconds, 1e-3)
    right = end * 1.12  # the bounds reached hold after the run: drawn on to the right edge
    finite = [p[2] for p in points if p[2] is not None]
    top = max([1.0, *(p[1] for p in points), *finite]) * 1.25
    unbounded = top * 0.94  # where "no finite upper bound yet" is drawn
    ts = [p[0] for p in points] + [right]
    los = [p[1] for p in points] + [points[-1][1]]
    ups = [unbounded if p[2] is None else p[2] for p in points]
    ups.append(ups[-1])
    fig, ax = pyplot().subplots(figsize=(7.5, 4.2), dpi=110)
    ax.fill_between(ts, los, ups, step="post", color="#888888", alpha=0.15, linewidth=0,
                    label="mean d* lies in this band")
    guarantee = lower_guarantee({s.guarantee for s in result.samples})
    ax.step(ts, ups, where="post", color=upper_colour, linewidth=2.2, linestyle="--",
            label="global upper bound (verified witnesses)")
    ax.plot(ts[:-1], ups[:-1], "s", color=upper_colour, markersize=4)
    ax.step(ts, los, where="post", color=lower_colour, linewidth=2.2, label=f"global lower bound ({guarantee})")
    ax.plot(ts[:-1], los[:-1], "o", color=lower_colour, markersize=4)
    if any(p[2] is None for p in points):
        ax.annotate("upper = \u221e while some input has no witness", (0, unbounded), xytext=(6, 4),
                    textcoords="offset points", va="bottom", ha="left", fontsize=8, color=upper_colour)
    ax.set_ylim(0, top)
    ax.set_xlim(0, right)
    n = len(result.samples)
    last_lo, last_up = points[-1][1], points[-1][2]
    ax.annotate(f"{last_lo:.2f}", (right, last_lo), xytext=(-3, -3), textcoords="offset points", va="top",
                ha="right", color=lower_colour, fontsize=9, fontweight="bold")
    if last_up is not None:
        ax.annotate(f"{last_up:.2f}", (right, last_up), xytext=(-3, 3), textcoords="offset points", va="bottom",
                    ha="right", color=upper_colour, fontsize=9, fontweight="bold")
    ax.set_xlabel("time since the run began (seconds)")
    ax.set_ylabel("mean pixels that must change (L0)")
    ax.set_title(f"Anytime bounds on global L0 robustness ({n} input{'s' if n != 1 else ''})", fontsize=11)
    ax.legend(loc="best", fontsize=8.5, framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def json_default(obj: Any) -> Any:
    """``json.dump(..., default=json_default)``: NumPy scalars and arrays as plain JSON."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
