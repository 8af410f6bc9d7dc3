"""The engine from Python: ``evaluate(model, data)`` does what ``l0tre robustness`` does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

import l0tre_core
from l0tre_core.witness import SampleState
from l0tre_core.checkpoint import Checkpoint, file_digest
from l0tre_core.data import Dataset
from l0tre_core.driver import Budget, Driver, LowerBounds
from l0tre_core.errors import CardError, CertificateContradiction, DataError, EnvironmentProblem, UsageError
from l0tre_core.events import BoundUpdate
from l0tre_core.executors import WorkersLost
from l0tre_core.model import Classifier
from l0tre_core.results import RunResult, write_results
from l0tre_core.schema import software_versions
from l0tre_core.threat import ThreatModel

Listener = Callable[[BoundUpdate, SampleState], None]


def versions(classifier: Classifier) -> dict[str, str]:
    """The versions a result records (``l0tre_core.schema.software_versions``)."""
    return software_versions()


def pick_kernels(host: Any, device: str) -> Any:
    """The array kernels for ``device``: CuPy where a GPU is usable (auto, cuda), NumPy otherwise."""
    kernels = host.registry("array_kernels")
    if device == "cpu":
        return kernels["numpy"]
    gpu = [k for name, k in kernels.items() if name != "numpy" and k.usable()]
    if gpu:
        return gpu[0]
    if device == "cuda":
        raise EnvironmentProblem("`device` cuda was asked for but no GPU array kernels are usable (is CuPy installed and a GPU visible?)",
                                 field="device")
    return kernels["numpy"]


def resolve_lower(mode: str, classifier: Classifier, host: Any, x: np.ndarray, threat: ThreatModel,
                  seed: int = 0) -> tuple[LowerBounds, str, list[str]]:
    """The lower-bound methods to run, prepared for this run; the mode actually run (``auto``
    falls back to ``discrete`` when the sound certifier cannot run or refuses the model); notes.

    ``mode`` is ``auto`` (sound where it can, the enumeration over V where it does not prove a
    level), ``both`` (each, always), or the name of one installed lower-bound method."""
    methods = {name: m for name, m in host.registry("bound_methods").items() if m.kind == "lower"}
    if mode in ("auto", "both"):
        names = [name for name in ("sound", "discrete") if name in methods]
    elif mode in methods:
        names = [mode]
    else:
        raise UsageError(f"`lower` must be auto, both or an installed lower-bound method "
                         f"({', '.join(sorted(methods))}), got {mode!r}", field="lower")
    chosen: list[tuple[Any, Any]] = []
    for name in names:
        method = methods[name]
        reason = method.unsupported(classifier)
        certifier = None
        if reason is None:
            certifier = method.prepare(classifier, x, threat, seed)
            reason = certifier.refusal()
        if reason is None:
            chosen.append((method, certifier))
        elif mode == "auto" and name == "sound":
            return resolve_lower("discrete", classifier, host, x, threat, seed)[0], "discrete", [
                f"sound lower bounds unavailable ({reason}); using discrete"]
        else:
            raise UsageError(f"`lower` {mode} is not available for this model: {reason}", hint="use `lower` discrete",
                             field="lower")
    if mode == "auto" and "sound" not in names:
        return LowerBounds(chosen), "discrete", ["sound lower bounds unavailable (no sound lower-bound method is installed); using discrete"]
    return LowerBounds(chosen, first_proof=mode != "both"), mode, []


def resolve_upper(names: Iterable[str] | None, host: Any) -> list[Any]:
    """The upper-bound methods to run after each level, in order: L0-TRE's ``sensitivity`` union
    always first, then the named ones (every installed one when ``names`` is None; ``none`` for
    no others)."""
    methods = {name: m for name, m in host.registry("bound_methods").items() if m.kind == "upper"}
    first = [methods["sensitivity"]] if "sensitivity" in methods else []
    if names is None:
        return first + [methods[name] for name in sorted(methods) if name != "sensitivity"]
    chosen = list(first)
    for name in names:
        if name in ("sensitivity", "none"):
            continue
        if name not in methods:
            raise UsageError(f"unknown upper-bound method {name!r} (installed: {', '.join(sorted(methods))})", field="upper")
        chosen.append(methods[name])
    return chosen


def check_model_space(classifier: Classifier) -> None:
    """Refuse a card whose normalisation maps the valid range outside float32 (e.g. a std of 1e-40):
    the model would see inf or NaN, and no bound computed on that could be trusted."""
    lo, hi = classifier.card.range
    with np.errstate(all="ignore"):
        scale, shift = classifier.affine()
        ends = np.stack([scale * lo + shift, scale * hi + shift])
        ok = np.all(np.isfinite(scale)) and np.all(np.isfinite(ends.astype(np.float32)))
    if not ok:
        raise CardError(
            f"the card's normalisation (mean {classifier.card.mean}, std {classifier.card.std}) maps the valid range "
            f"[{lo:g}, {hi:g}] to values float32 cannot hold; check `mean`/`std`/`range`", field="std"
        )


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise UsageError(f"`seed` must be an integer from 0 to {2**32 - 1}, got {seed!r}", field="seed")
    return int(seed)


def check_resumed(classifier: Classifier, threat: ThreatModel, data: Dataset, states: dict[int, SampleState]) -> None:
    """Check what a checkpoint says against the model and data: the reference label must be the
    model's prediction (or the data's label), and a witness must flip it, re-run through the model
    now, changing exactly as many units as its upper bound says. An input whose record fails is
    searched again from the start."""
    from l0tre_core.witness import Witness

    encoder = classifier.encoder(threat.unit)
    positions = [pos for pos, i in enumerate(data.index) if int(i) in states]
    if not positions:
        return
    preds = classifier.predict(data.x[positions])
    for pos, pred in zip(positions, preds):
        i = int(data.index[pos])
        s = states[i]
        label = None if data.y is None else int(data.y[pos])
        ref = label if threat.against == "label" else int(pred)
        ok = s.reference == ref and s.label == label
        if ok and s.witness is not None:
            xu = data.x[pos].reshape(encoder.n_units, encoder.channels)
            adv_units = s.witness.apply(xu)
            ok = (Witness.between(xu, adv_units).size == s.witness.size
                  and int(np.argmax(classifier.outputs(adv_units.reshape(1, *data.x.shape[1:]))[0])) != s.reference)
        if not ok:
            del states[i]


def failure_notes(failures: list[tuple[int, str]]) -> list[str]:
    """One note for the inputs where a lower-bound method raised (``Driver.failures``)."""
    if not failures:
        return []
    index, what = failures[0]
    n = len({i for i, _ in failures})
    return [f"a lower-bound method failed on {n} input(s) (first: input {index}, {what}); their lower "
            "bounds are what the other methods proved; please report this with the model"]


def evaluate(
    classifier: Classifier,
    data: Dataset,
    *,
    threat: ThreatModel | None = None,
    budget: Budget | None = None,
    lower: str = "auto",
    device: str = "auto",
    out: Path | None = None,
    resume: bool = False,
    seed: int = 0,
    host: Any = None,
    listeners: Iterable[Listener] = (),
    upper: Iterable[str] | None = None,
    executor: Any = None,
) -> RunResult:
    """Bound the minimal adversarial distance of every input in ``data``; anytime, resumable.

    With ``out``, progress is checkpointed there after every step and the result files are
    written at the end (also after Ctrl-C, with the bounds reached so far). A KeyboardInterrupt
    after the first step carries the partial ``RunResult`` as its ``result`` attribute.

    ``executor`` (``make_executor``; default: this process) is where the inputs are searched;
    results, checkpoint and updates are the same whichever runs them. When a cluster is lost
    (``WorkersLost``, exit code 4), the results reached so far are written before it is raised,
    as its ``result``.
    """
    from l0tre_core.host import create_host

    started = time.monotonic()  # the run's clock: preparing the lower bounds is part of its time
    host = host or create_host()
    threat = threat or ThreatModel(lo=classifier.card.lo, hi=classifier.card.hi)
    budget = budget or Budget()
    if (threat.lo, threat.hi) != tuple(classifier.card.range):
        raise UsageError("the threat model's range must be the model card's valid range")
    seed = check_seed(seed)
    check_model_space(classifier)
    kernels = pick_kernels(host, device)
    lower_bounds, lower_mode, notes = resolve_lower(lower, classifier, host, data.x, threat, seed)
    uppers = resolve_upper(upper, host)
    identity = {
        "model_sha256": file_digest(classifier.path),
        "card": classifier.card.to_dict(),
        "data": data.source,
        "index": data.index.tolist(),
        "threat": threat.to_dict(),
        "max_t": budget.max_t,
        "lower": lower_mode,
        "upper": sorted(m.name for m in uppers if m.name != "sensitivity"),
        "seed": seed,
        "version": l0tre_core.__version__,
    }
    # (seconds since the run began, global lower, global upper) after each finished step; a resumed
    # run continues the checkpoint's history, its clock from where the saved steps left off
    history: list[tuple[float, float, float | None]] = []
    before = 0.0  # seconds the run had spent by its last saved step, before this resume
    checkpoint = None
    states: dict[int, SampleState] = {}
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
        checkpoint = Checkpoint(out, identity)
        if resume:
            encoder = classifier.encoder(threat.unit)
            states = checkpoint.load(
                encoder.channels, units=encoder.n_units, classes=classifier.n_classes, value_range=(threat.lo, threat.hi)
            )
            check_resumed(classifier, threat, data, states)
            history = list(checkpoint.history)
            before = history[-1][0] if history else 0.0
        checkpoint.start(resume)

    def record(update: BoundUpdate, state: SampleState) -> None:
        if update.recorded:  # a finished step; phase announcements only inform the views
            point = (before + time.monotonic() - started, update.global_lower, update.global_upper)
            history.append(point)
            if checkpoint is not None:
                checkpoint.record(state, at=point)
        host.hook.l0tre_bounds_updated(update=update)

    driver = Driver(
        classifier, threat, budget, kernels, lower=lower_bounds,
        listeners=[record, *listeners], upper_methods=uppers, seed=seed,
    )
    task = None
    if executor is not None and executor.name != "local":
        from l0tre_core.executors.recipe import ClassifierRecipe
        from l0tre_core.input_search import InputSearch

        task = InputSearch(ClassifierRecipe.of(classifier, host, device), threat, budget, lower_mode,
                           [m.name for m in uppers if m.name != "sensitivity"], seed, device)
    interrupted = False
    lost: WorkersLost | None = None
    try:
        samples = driver.run(data.x, data.y, data.index, states, executor=executor, task=task)
    except (KeyboardInterrupt, WorkersLost) as exc:
        if driver.states is None:
            raise  # stopped before the first step: the checkpoint (if any) holds all there is
        interrupted = isinstance(exc, KeyboardInterrupt)
        lost = exc if isinstance(exc, WorkersLost) else None
        samples = driver.states
    finally:
        if checkpoint is not None:
            checkpoint.close()
    encoder = classifier.encoder(threat.unit)
    images = {}
    for pos, s in enumerate(samples):
        if s.witness is not None:
            xu = data.x[pos].reshape(encoder.n_units, encoder.channels)
            adv = s.witness.apply(xu).reshape(1, *data.x.shape[1:])
            images[s.index] = data.to_file_layout(adv, classifier.geometry)[0]
    model_info = classifier.describe()
    model_info["notes"] = model_info["notes"] + notes + failure_notes(driver.failures)
    result = RunResult(
        model=model_info,
        threat=threat.to_dict(),
        budget={"max_t": budget.max_t, "time_limit": budget.time_limit, "input_time_limit": budget.input_time_limit,
                "certify_time": budget.certify_time,
                "lower": lower_mode, "upper": [m.name for m in uppers],
                "kernels": kernels.name},
        data={"source": data.source, "inputs": len(data), "first_index": int(data.index[0]) if len(data) else None},
        samples=samples,
        seconds=time.monotonic() - started,
        seed=seed,
        versions=versions(classifier),
        history=history,
        complete=not interrupted and lost is None and all(s.finished for s in samples),
        witness_images=images,
    )
    if out is not None:
        write_results(result, out, data.sample_shape)
    if lost is not None:
        gone = WorkersLost(f"{lost}; the results reached so far are written"
                           + (f" to {out} (continue with `resume`, on any executor)" if out is not None else ""))
        gone.result = result
        raise gone
    if interrupted:
        stop = KeyboardInterrupt()
        stop.result = result  # type: ignore[attr-defined]  # the bounds reached so far, for callers without `out`
        raise stop
    wrong = [s.index for s in samples if s.contradiction]
    if wrong:
        exc = CertificateContradiction(
            f"internal error: a sound lower bound was above a verified witness at input(s) {', '.join(map(str, wrong))}; "
            "the witnesses are kept and no lower bound above them is reported"
            + (f" (results in {out})" if out is not None else ""),
            hint="please report this with the model",
        )
        exc.result = result
        raise exc
    return result
