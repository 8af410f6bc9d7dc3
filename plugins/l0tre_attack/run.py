"""The attack from Python: ``run_attack(model, data)`` does what ``l0tre attack`` does.

Per input: L0-TRE's t = 1 sensitivity sweep, the cumulative union of the most sensitive pixels and
its tightening; an adaptive greedy construction (re-ranking the changes at each step), tightened;
the random search that shrinks the smaller of the two within a query budget; and, where all of
these fail, the last resort towards an input classified otherwise. Every reported adversarial
example is re-run through the model and its distance recounted; none is hidden for its size.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from l0tre_attack.random_search import RandomSearch, UnitPrior, greedy_witness
from l0tre_core import CHUNK, ClassifierRecipe, SearchContext, ThreatModel, UsageError, Witness

SUCCESS_AT = (1, 2, 4, 8, 16, 32)
GREEDY_EVALS = 100_000  # evaluations the adaptive greedy start may spend per input (0: off)
# The attack's own defaults (measured on the demo, benchmarks/RESULTS.md): ten times the random
# search's budget inside `robustness`, in batches of 128 candidates, which run several times more
# evaluations per second than batches of 32 on a CPU and shrink examples further per second.
ATTACK_BUDGET = 20_000
ATTACK_BATCH = 128
PNG_PAIRS = 16


@dataclass
class AttackRecord:
    """The attack on one input."""

    index: int  # position in the data file
    label: int | None
    reference: int
    witness: Witness | None  # the reported adversarial example (None: the attack failed)
    adversarial_label: int | None
    l0_sensitivity: int | None  # size after the sensitivity search and tightening alone
    lower: int  # proven over V by the t = 1 sweep: 2 when no single pixel of V flips the label
    found_by: str | None  # "sensitivity", "greedy", "random-search", "toward-data" or "clean" (misclassified, --against label)
    evaluations: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def l0(self) -> int | None:
        return None if self.witness is None else self.witness.size

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "reference": self.reference,
            "l0": self.l0,
            "success": self.witness is not None,
            "adversarial_label": self.adversarial_label,
            "l0_sensitivity": self.l0_sensitivity,
            "lower_over_values": self.lower,
            "found_by": self.found_by,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
            "witness": None if self.witness is None else self.witness.to_json(),
        }


def summarise(records: list[AttackRecord]) -> dict[str, Any]:
    """Success rate at L0 <= k and the median L0 (failures count as infinitely far)."""
    n = len(records)
    l0 = np.array([math.inf if r.l0 is None else r.l0 for r in records], float)
    found = l0[np.isfinite(l0)]
    median = float(np.median(l0)) if n else math.inf
    return {
        "inputs": n,
        "successes": int(len(found)),
        "success_rate": float(len(found) / n) if n else 0.0,
        "success_at": {str(k): float(np.mean(l0 <= k)) if n else 0.0 for k in SUCCESS_AT},
        "median_l0": median if math.isfinite(median) else None,
        "mean_l0_of_successes": float(found.mean()) if len(found) else None,
        "evaluations": int(sum(r.evaluations for r in records)),
    }


@dataclass
class AttackResult:
    model: dict[str, Any]
    threat: dict[str, Any]
    settings: dict[str, Any]
    data: dict[str, Any]
    records: list[AttackRecord]
    seconds: float
    complete: bool = True
    interrupted: bool = False  # stopped by Ctrl-C (or SIGTERM) rather than by a time limit
    images: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # index -> clean, adv [P, C]

    @property
    def summary(self) -> dict[str, Any]:
        out = summarise(self.records)
        out["seconds"] = round(self.seconds, 3)
        return out

    def to_json(self) -> dict[str, Any]:
        """The result document (``l0tre_core.result_document``); ``attack`` holds the settings."""
        from l0tre_core import result_document

        return result_document(
            "attack",
            model=self.model,
            threat=self.threat,
            data=self.data,
            attack=self.settings,
            seconds=round(self.seconds, 3),
            complete=self.complete,
            interrupted=self.interrupted,
            summary=self.summary,
            samples=[r.to_json() for r in self.records],
        )


def attack_input(ctx: SearchContext, search: RandomSearch, rng: np.random.Generator, deadline: float | None,
                 budget: int) -> tuple[Witness | None, int | None, int, str | None]:
    """Sensitivity search, union and tightening, then random search; the best verified example,
    the size after the sensitivity stage, the lower bound over V and which stage found it."""
    step = ctx.level(1, deadline)
    sens = step.sensitivity
    lower = 2 if step.proven_over_v else 1
    w: Witness | None = step.flip if step.flip is not None else step.union()
    l0_sens = None if w is None else w.size
    found_by = None if w is None else "sensitivity"
    if GREEDY_EVALS and (w is None or w.size > lower):
        g, _ = greedy_witness(ctx, sens, deadline, GREEDY_EVALS)
        if g is not None:
            g = ctx.tighten(g)
            if ctx.verify(g) and (w is None or g.size < w.size):
                w, found_by = g, "greedy"
    if budget > 0 and (w is None or w.size > lower):
        prior = UnitPrior.from_sensitivity(sens, ctx.encoder.n_units, ctx.values)
        outcome = search.search(ctx, w, rng, deadline, lower=lower, queries=budget, prior=prior)
        if outcome.witness is not None and (w is None or outcome.witness.size < w.size):
            w, found_by = outcome.witness, "random-search"
    if w is None:  # the last resort: towards an input of the data the model classifies otherwise
        w = ctx.toward_donors(deadline)
        if w is not None:
            found_by = "toward-data"
            if budget > 0:  # and shrink what it found like any other example
                outcome = search.search(ctx, w, rng, deadline, lower=lower, queries=budget,
                                        prior=UnitPrior.from_sensitivity(sens, ctx.encoder.n_units, ctx.values))
                if outcome.witness is not None and outcome.witness.size < w.size:
                    w, found_by = outcome.witness, "random-search"
    return w, l0_sens, lower, found_by


def check_settings(budget: int, k_max: int, time_limit: float | None, input_time_limit: float | None) -> None:
    """Refuse settings out of their domain (a UsageError naming the flag)."""
    if budget < 0:
        raise UsageError(f"--budget must be >= 0 evaluations, got {budget}")
    if k_max < 1:
        raise UsageError(f"--k-max must be at least 1, got {k_max}")
    for name, value in (("--time-limit", time_limit), ("--input-time-limit", input_time_limit)):
        if value is not None and not value > 0:
            raise UsageError(f"{name} must be a positive number of seconds, got {value}")


def run_attack(
    classifier: Any,
    data: Any,
    *,
    threat: ThreatModel | None = None,
    budget: int = ATTACK_BUDGET,
    k_max: int = 64,
    seed: int = 0,
    device: str = "auto",
    host: Any = None,
    time_limit: float | None = None,
    input_time_limit: float | None = None,
    listeners: Iterable[Callable[[AttackRecord, int, int], None]] = (),
    batch: int = ATTACK_BATCH,
    executor: Any = None,
) -> AttackResult:
    """Attack every input of ``data``; listeners get ``(record, done, total)`` after each input.

    ``budget`` is the random search's evaluations per input (on top of the sweep, which costs
    pixels x |V|); ``k_max`` is the largest k the random search tries when the sensitivity search
    found nothing (a larger verified example, from the last resort, is still reported).
    Ctrl-C stops after the current input; the result then holds the inputs done and
    ``complete`` is False. ``executor`` (``l0tre_core.make_executor``; default: this process) is
    where the inputs are attacked; the records are the same, in input order, whichever runs them
    (listeners get them as they finish).
    """
    from l0tre_core import create_host, make_executor, pick_kernels

    check_settings(budget, k_max, time_limit, input_time_limit)
    host = host or create_host()
    threat = threat or ThreatModel(lo=classifier.card.lo, hi=classifier.card.hi)
    if (threat.lo, threat.hi) != tuple(classifier.card.range):
        raise UsageError("the threat model's range must be the model card's valid range")
    if threat.against == "label" and data.y is None:
        raise UsageError("--against label needs labels for the data")
    kernels = pick_kernels(host, device)
    search = RandomSearch(queries=budget, batch=batch, k_cap=k_max)
    listeners = list(listeners)
    started = time.monotonic()
    run_deadline = None if time_limit is None else started + time_limit
    preds = classifier.predict(data.x) if len(data) else np.zeros(0, np.int64)
    found: dict[int, tuple[AttackRecord, tuple[np.ndarray, np.ndarray] | None]] = {}  # position -> result
    interrupted = False
    local = InputAttack(None, threat, search, data, preds, seed, budget, k_max, input_time_limit)
    local.open_here(classifier, kernels, run_deadline)
    task = None
    if executor is not None and executor.name != "local":
        task = InputAttack(ClassifierRecipe.of(classifier, host, device), threat, search, data, preds, seed, budget,
                           k_max, input_time_limit, device)

    def item(pos: int) -> float | None | tuple[()]:
        """Seconds left of the run's time limit (() for none); None once it is up."""
        if run_deadline is None:
            return ()
        left = run_deadline - time.monotonic()
        return None if left < 0 else left

    try:
        for pos, (record, pair) in (executor or make_executor("local")).map(task, range(len(data)), item, lambda k, e: None,
                                                                local=local):
            found[pos] = (record, pair)
            for listener in listeners:
                listener(record, len(found), len(data))
    except KeyboardInterrupt:
        interrupted = True
    records = [found[pos][0] for pos in sorted(found)]
    images = {found[pos][0].index: found[pos][1] for pos in sorted(found) if found[pos][1] is not None}
    complete = len(records) == len(data)
    return AttackResult(
        model=classifier.describe(),
        threat=threat.to_dict(),
        settings={"method": ["sensitivity", "greedy", "random-search"], "budget": budget, "k_max": k_max, "seed": seed,
                  "batch": batch, "kernels": kernels.name, "time_limit": time_limit,
                  "input_time_limit": input_time_limit},
        data={"source": data.source, "inputs": len(data), "first_index": int(data.index[0]) if len(data) else None},
        records=records,
        seconds=time.monotonic() - started,
        complete=complete and not interrupted,
        interrupted=interrupted,
        images=images,
    )


@dataclass
class InputAttack:
    """The attack on one input as a task an executor can run in another process: ``open`` builds
    the model (from its recipe) and the kernels once per worker; each item is the seconds left of
    the run's time limit (``()``: none); the result is the input's record and its image pair."""

    model: Any  # a ClassifierRecipe (None: run in this process with ``open_here``)
    threat: ThreatModel
    search: RandomSearch
    data: Any
    preds: np.ndarray
    seed: int
    budget: int
    k_max: int
    input_time_limit: float | None
    device: str = "auto"

    def open(self, threads: int) -> "InputAttack":
        from l0tre_core import pick_kernels

        host, classifier = self.model.open(threads)
        self.open_here(classifier, pick_kernels(host, self.device), None)
        return self

    def open_here(self, classifier: Any, kernels: Any, run_deadline: float | None) -> None:
        self._classifier, self._kernels, self._run_deadline = classifier, kernels, run_deadline

    def run(self, pos: int, left: float | tuple[()], emit: Any) -> tuple[AttackRecord, tuple[np.ndarray, np.ndarray] | None]:
        deadline = self._run_deadline
        if deadline is None and left != ():
            deadline = time.monotonic() + left  # type: ignore[operator]  # this machine's clock
        return _attack_one(self._classifier, self._kernels, self.threat, self.search, self.data, pos, self.preds,
                           self.seed, self.budget, self.k_max, deadline, self.input_time_limit)

    def __getstate__(self) -> dict[str, Any]:
        # what a worker gets: never this process's session or kernels
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def _attack_one(classifier: Any, kernels: Any, threat: ThreatModel, search: RandomSearch, data: Any, pos: int,
                preds: np.ndarray, seed: int, budget: int, k_max: int, run_deadline: float | None,
                input_time_limit: float | None) -> tuple[AttackRecord, tuple[np.ndarray, np.ndarray] | None]:
    t0 = time.monotonic()
    ev0 = classifier.evaluations
    index = int(data.index[pos])
    label = None if data.y is None else int(data.y[pos])
    pred = int(preds[pos])
    ref = label if threat.against == "label" else pred
    deadline = run_deadline
    if input_time_limit is not None:
        deadline = t0 + input_time_limit if deadline is None else min(deadline, t0 + input_time_limit)
    ctx = SearchContext(classifier, kernels, threat, data.x[pos], ref, CHUNK)
    ctx.data = (data.x, preds)
    notes: list[str] = []
    if pred != ref:  # misclassified and attacked against its label: the clean input is the example
        w: Witness | None = Witness(np.zeros(0, np.int64), np.zeros((0, ctx.encoder.channels), np.float32))
        l0_sens, lower, found_by = 0, 0, "clean"
    else:
        rng = np.random.default_rng([seed, index])
        w, l0_sens, lower, found_by = attack_input(ctx, search, rng, deadline, budget)
    adv_label = None
    if w is not None:
        # the final check: re-run through the model's ordinary input path, recount the distance
        adv = w.apply(ctx.x_units)
        recount = Witness.between(ctx.x_units, adv)
        if recount.size != w.size or not (w.size == 0 or ctx.verify(w)):
            notes.append(f"discarded an example that failed re-verification (L0 {w.size})")
            w = None
        else:  # reported whatever its size (no cap hides a verified example; success_at grades them)
            adv_label = int(classifier.predict(adv.reshape(1, *data.x.shape[1:]))[0])
    record = AttackRecord(index, label, ref, w, adv_label, l0_sens, lower, found_by if w is not None else None,
                          classifier.evaluations - ev0, time.monotonic() - t0, notes)
    pair = None if w is None else (data.x[pos].copy(), w.apply(ctx.x_units).reshape(data.x.shape[1:]))
    return record, pair


# --- result files ---------------------------------------------------------------------------------


def write_outputs(result: AttackResult, folder: Path, data: Any, geometry: Any) -> list[Path]:
    """``results.json`` (the result document), ``adversarial.npz`` (index, x_adv in the data file's
    per-sample layout) and ``adversarial.png`` (up to 16 clean/adversarial pairs, changed pixels marked)."""
    from l0tre_core import atomic_write, write_result_json

    written = [write_result_json(folder, result.to_json())]

    idx = sorted(result.images)
    x_adv = (data.to_file_layout(np.stack([result.images[i][1] for i in idx]), geometry).astype(np.float32)
             if idx else np.zeros((0, *data.sample_shape), np.float32))
    buf = io.BytesIO()
    np.savez_compressed(buf, index=np.asarray(idx, np.int64), x_adv=x_adv)
    path = folder / "adversarial.npz"
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), binary=True)
    written.append(path)

    png = adversarial_png(result, geometry)
    path = folder / "adversarial.png"
    atomic_write(path, lambda fh: fh.write(png), binary=True)
    written.append(path)
    return written


def _image_shape(geometry: Any) -> tuple[int, int]:
    if geometry.image_shape:
        return tuple(geometry.image_shape)  # type: ignore[return-value]
    p = geometry.n_pixels
    side = int(round(math.sqrt(p)))
    return (side, side) if side * side == p else (1, p)


def _display(x: np.ndarray, shape: tuple[int, int], lo: float, hi: float) -> tuple[np.ndarray, str | None]:
    img = (np.asarray(x, np.float32) - lo) / max(hi - lo, 1e-12)
    img = np.clip(img, 0, 1)
    c = img.shape[-1]
    if c == 3:
        return img.reshape(*shape, 3), None
    return img.mean(axis=-1).reshape(shape), "gray"


def adversarial_png(result: AttackResult, geometry: Any, pairs: int = PNG_PAIRS) -> bytes:
    """One row per adversarial example: clean | adversarial (changed pixels outlined) | difference."""
    from matplotlib.patches import Rectangle

    from l0tre_core import png, pyplot

    lo, hi = result.threat["range"]
    shape = _image_shape(geometry)
    shown = [r for r in result.records if r.witness is not None and r.index in result.images][:pairs]
    rows = max(1, len(shown))
    wide = shape[1] / max(shape[0], 1)
    panel = 2.4
    fig, axes = pyplot().subplots(rows, 3, figsize=(3 * panel * min(max(wide, 0.6), 3) + 0.6, panel * rows + 0.9),
                                  dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    classes = result.model.get("card", {}).get("classes")

    def name(k: int | None) -> str:
        if k is None:
            return "?"
        return str(classes[k]) if classes and k < len(classes) else str(k)

    for i, r in enumerate(shown):
        clean, adv = result.images[r.index]
        ax_c, ax_a, ax_d = axes[i]
        img_c, cmap = _display(clean, shape, lo, hi)
        ax_c.imshow(img_c, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax_c.set_title(f"#{r.index} clean: {name(r.reference)}", fontsize=10)
        img_a, cmap = _display(adv, shape, lo, hi)
        ax_a.imshow(img_a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ys, xs = np.divmod(r.witness.units, shape[1])  # type: ignore[union-attr]
        for y, x in zip(ys, xs):
            ax_a.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.0))
        ax_a.set_title(f"adversarial: {name(r.adversarial_label)} (L0 = {r.l0})", fontsize=10)
        diff = np.asarray(img_a, np.float64) - np.asarray(img_c, np.float64)
        if diff.ndim == 3:
            diff = diff.mean(axis=-1)
        ax_d.imshow(diff, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax_d.set_title("difference (red +, blue -)", fontsize=10)
        for ax in (ax_c, ax_a, ax_d):
            for spine in ax.spines.values():
                spine.set_edgecolor("#888888")
    if not shown:
        axes[0, 1].text(0.5, 0.5, "no adversarial examples", ha="center", va="center", fontsize=11,
                        transform=axes[0, 1].transAxes)
    fig.suptitle("Adversarial examples: clean | adversarial (changed pixels outlined in red) | difference",
                 fontsize=11)
    fig.tight_layout(h_pad=2.2)
    # a rule between pairs, so each row reads as one example
    for i in range(1, len(shown)):
        top = axes[i - 1, 0].get_position().y0
        bottom = axes[i, 0].get_position().y1
        y = (top + bottom) / 2 + 0.012
        fig.add_artist(pyplot().Line2D([0.02, 0.98], [y, y], transform=fig.transFigure, color="#666666",
                                       linewidth=1.0))
    return png(fig)
