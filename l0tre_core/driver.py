"""The anytime driver: tightens every input's bounds, level by level, within the budgets.

For t = 1, 2, ...: the lower-bound methods decide the level (``auto``: the sound certifier, then
the enumeration over V where it does not prove the level; ``both``: each of them; or one method by
name), then the upper-bound methods shrink the witness (the sensitivity union first). Every
witness is verified before it is kept; bounds only ever improve; after every step the input's
state is handed to the listeners (progress, checkpoint, plugins).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from l0tre_core.witness import SampleState, Witness
from l0tre_core.errors import UsageError
from l0tre_core.events import BoundUpdate
from l0tre_core.sweep import SearchContext
from l0tre_core.threat import ThreatModel

T1_CERTIFY_SECONDS = 60.0
MAX_T = 1  # the default largest subset size: every single pixel (t = 2 costs C(pixels, 2) x |V|^2 per input)
CHUNK = 4096  # perturbed inputs built and run per model call group


@dataclass(frozen=True)
class Budget:
    max_t: int = MAX_T
    time_limit: float | None = None  # seconds for the whole run
    input_time_limit: float | None = None  # seconds per input
    certify_time: float = 10.0  # seconds of certificate splitting per input and level (t = 1: at least 60)
    chunk: int = CHUNK

    def __post_init__(self) -> None:
        if self.max_t < 1:
            raise UsageError(f"`max_t` must be at least 1, got {self.max_t}", field="max_t")
        for name in ("time_limit", "input_time_limit", "certify_time"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"`{name}` must be a positive number of seconds, got {value}", field=name)
        if self.chunk < 1:
            raise UsageError(f"`chunk` must be positive, got {self.chunk}", field="chunk")


def global_bounds(states: Iterable[SampleState]) -> tuple[float, float | None]:
    """Mean lower and mean upper bound of d* over the inputs (upper is None while any input has
    no witness: an input without one has no finite upper bound)."""
    states = list(states)
    if not states:
        return 0.0, None
    lower = float(np.mean([s.lower for s in states]))
    uppers = [s.upper for s in states]
    upper = None if any(u is None for u in uppers) else float(np.mean(uppers))
    return lower, upper


@dataclass
class LowerBounds:
    """The lower-bound methods of a run, each with its per-run ``Certifier``, in order.

    ``first_proof``: stop at the first sound proof of a level (``auto``: the sound certifier, then
    the enumeration only where it does not prove; at t = 1 the cheap enumeration first, to refute
    before proving); otherwise every method runs (``both``)."""

    methods: list[tuple[Any, Any]] = field(default_factory=list)
    first_proof: bool = True


@dataclass
class Driver:
    classifier: Any
    threat: ThreatModel
    budget: Budget
    kernels: Any
    lower: LowerBounds = field(default_factory=LowerBounds)
    upper_methods: list[Any] = field(default_factory=list)  # upper-bound methods, run in order after each level
    seed: int = 0
    listeners: list[Callable[[BoundUpdate, SampleState], None]] = field(default_factory=list)
    states: list[SampleState] | None = None  # every input's state once the run has started
    # in a worker process: where its steps and phases go (pos, state, phase, working) instead of
    # the listeners; the driver's process builds the updates, with the run's global bounds
    forward: Callable[[int, SampleState, str, int], None] | None = None
    # (input index, "method: error") where a lower-bound method raised: its level is left as the
    # other methods left it (a bug in one method must not end the run or lose the others' bounds)
    failures: list[tuple[int, str]] = field(default_factory=list)

    def run(self, x: np.ndarray, labels: np.ndarray | None, index: np.ndarray, states: dict[int, SampleState] | None = None,
            *, executor: Any = None, task: Any = None) -> list[SampleState]:
        """Search every input; ``states`` holds finished or partial states from a checkpoint.

        ``executor`` (default: this process) runs the unfinished inputs; one that runs them
        elsewhere needs ``task``, an ``InputSearch`` for this run (its data is filled in here). The
        inputs' states stream back into ``self.states`` as their steps finish, wherever they run."""
        from l0tre_core.executors.local import LocalExecutor

        states = dict(states or {})
        run_deadline = None if self.budget.time_limit is None else time.monotonic() + self.budget.time_limit
        refs = self._references(x, labels, index, states)
        ordered = [states[int(i)] if int(i) in states else refs[pos] for pos, i in enumerate(index)]
        self.states = ordered
        executor = executor or LocalExecutor()
        if task is not None:
            task = task.with_data(x, self._data[1])

        # each input as of its last finished step: what an input whose worker died starts again
        # from, as a resumed run would (the phases after that step are lost with the worker)
        saved = list(ordered)

        def item(pos: int) -> tuple[SampleState, float | None] | None:
            """What input ``pos`` needs, or None: finished, or the run's time is up."""
            state = saved[pos]
            left = None if run_deadline is None else run_deadline - time.monotonic()
            if state.finished or (left is not None and left < 0):
                return None
            return state, left

        def receive(pos: int, event: tuple[str, int, SampleState, list[tuple[int, str]]]) -> None:
            phase, working, state, failed = event  # a step or phase of an input searched elsewhere
            self.failures.extend(failed)
            if phase == "failures":  # (nothing new to report but them)
                return
            ordered[pos] = state
            if phase == "level":
                saved[pos] = state
            self._emit(pos, state, phase, working)

        pending = [pos for pos, state in enumerate(ordered) if not state.finished]
        for pos, state in executor.map(task, pending, item, receive, local=_InProcess(self, x, run_deadline)):
            ordered[pos] = state
        return ordered

    def _references(self, x: np.ndarray, labels: np.ndarray | None, index: np.ndarray, states: dict[int, SampleState]) -> list[SampleState]:
        preds = self.classifier.predict(x) if len(x) else np.zeros(0, np.int64)
        self._data = (x, preds)  # every input and its class: donors for the upper bound's last resort
        out = []
        for pos, i in enumerate(index):
            label = None if labels is None else int(labels[pos])
            if self.threat.against == "label":
                if label is None:
                    raise UsageError("`against` label needs labels for the data", field="against")
                ref = label
            else:
                ref = int(preds[pos])
            state = SampleState(index=int(i), label=label, reference=ref)
            if self.threat.against == "label" and int(preds[pos]) != label:
                # misclassified: the clean input is its own witness, d* = 0
                state.lower_sound = state.lower_discrete = 0
                state.upper = 0
                state.witness = Witness(np.zeros(0, np.int64), np.zeros((0, self.classifier.encoder(self.threat.unit).channels), np.float32))
                state.finished = True
            out.append(state)
        return out

    def _emit(self, pos: int, state: SampleState, phase: str = "level", working: int = 0) -> None:
        if self.forward is not None:
            self.forward(pos, state, phase, working or state.level)
            return
        assert self.states is not None
        lo, up = global_bounds(self.states)
        update = BoundUpdate(
            index=state.index, position=pos, lower=state.lower, upper=state.upper, guarantee=state.guarantee,
            level=state.level, evaluations=state.evaluations, seconds=state.seconds, finished=state.finished,
            global_lower=lo, global_upper=up, done=sum(s.finished for s in self.states), total=len(self.states),
            phase=phase, working=working or state.level,
        )
        for listener in self.listeners:
            listener(update, state)

    def _search(self, pos: int, x: np.ndarray, state: SampleState, run_deadline: float | None) -> None:
        started = time.monotonic()
        spent_before = state.seconds
        deadline = run_deadline
        if self.budget.input_time_limit is not None:
            remaining = max(0.0, self.budget.input_time_limit - spent_before)
            own = started + remaining
            deadline = own if deadline is None else min(deadline, own)
        evals0 = self.classifier.evaluations
        ctx = SearchContext(self.classifier, self.kernels, self.threat, x, state.reference, self.budget.chunk)
        ctx.data = self._data
        if state.level >= 1 and self.upper_methods and not state.settled:
            # a resumed input: rebuild the t = 1 ranking other searches draw on, as the
            # uninterrupted run had it (cheap, and the same every time)
            ctx.sweep(1, None)

        def account() -> None:
            state.evaluations += self.classifier.evaluations - account.last  # type: ignore[attr-defined]
            account.last = self.classifier.evaluations  # type: ignore[attr-defined]
            state.seconds = spent_before + time.monotonic() - started

        account.last = evals0  # type: ignore[attr-defined]
        interrupted = False
        try:
            for t in range(state.level + 1, self.budget.max_t + 1):
                if state.settled or (deadline is not None and time.monotonic() > deadline):
                    break

                def phase(name: str, t: int = t) -> None:
                    account()
                    self._emit(pos, state, name, t)

                if not self._level(ctx, t, state, deadline, phase):
                    account()
                    break
                state.level = t
                account()
                if state.settled or t == self.budget.max_t:
                    state.finished = True
                self._emit(pos, state)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if not interrupted:
                account()
        if (state.settled or state.level >= self.budget.max_t) and not state.finished:
            state.finished = True  # settled without a step of its own (e.g. a resumed input)
            self._emit(pos, state)

    def _level(self, ctx: SearchContext, t: int, state: SampleState, deadline: float | None,
               phase: Callable[[str], None]) -> bool:
        """One step at subset size t; False when the budget ran out before the step finished.
        ``phase`` announces each phase as it starts."""
        finished = True
        proven = False
        for method, certifier in self._order(t):
            if state.settled or (proven and self.lower.first_proof) or (state.upper is not None and state.upper <= t):
                break  # (a witness of at most t units: no method can prove this level)
            if method.guarantee == "sound" and state.lower_sound > t:
                continue  # proven at this level before (a resumed input)
            if _past(deadline):
                finished = False  # out of time: a method started now could only overrun the input's limit
                break
            phase("certify" if method.guarantee == "sound" else "sweep")
            try:
                cert = certifier.certify(ctx, t, self._certify_deadline(method, t, deadline))
            except Exception as exc:  # noqa: BLE001 - reported in the run's notes, never as a bound
                self.failures.append((state.index, f"{method.name}: {type(exc).__name__}: {exc}"))
                continue
            if cert.status == "proven":
                state.raise_lower(t + 1, method.guarantee)
                proven = method.guarantee == "sound"  # nothing proves more; a discrete proof may yet be made sound
            elif cert.status == "refuted" and cert.witness is not None:
                w = Witness.between(ctx.x_units, cert.witness.apply(ctx.x_units))  # counted as the engine counts
                if ctx.verify(w):
                    state.offer(ctx.tighten(w) if w.size > 1 else w)
            elif cert.status == "band":
                state.float32_band = t
            elif cert.status == "timeout":
                finished = False
        for method in self.upper_methods:
            self._offer_sweep(ctx, t, state)
            if state.settled or (state.upper is not None and _past(deadline)):
                break  # out of time with a witness in hand; without one the last resorts still run
            phase("search")
            # seeded by (run seed, input, level), never by order of arrival: resumed runs agree
            rng = np.random.default_rng([self.seed, state.index, t])
            witness = method.improve(ctx, state, t, deadline, rng)
            if witness is not None:
                witness = Witness.between(ctx.x_units, witness.apply(ctx.x_units))
                if ctx.verify(witness):
                    state.offer(witness)
        self._offer_sweep(ctx, t, state)
        return finished

    @staticmethod
    def _offer_sweep(ctx: SearchContext, t: int, state: SampleState) -> None:
        # a complete sweep of the level, whichever method ran it, proves the level over V
        sens = ctx.sensitivities.get(t)
        if sens is not None and sens.complete and sens.flip is None:
            state.raise_lower(t + 1, "discrete")

    def _order(self, t: int) -> list[tuple[Any, Any]]:
        """The lower-bound methods for level t. ``auto`` refutes before it proves where that is
        cheap: at t = 1 the enumeration over V (a few thousand evaluations) runs before the
        certifier, which then only runs where no single unit flips the label."""
        methods = self.lower.methods
        if t == 1 and self.lower.first_proof and len(methods) > 1:
            cheap = [m for m in methods if m[0].guarantee == "discrete"]
            return cheap + [m for m in methods if m[0].guarantee != "discrete"]
        return methods

    def _certify_deadline(self, method: Any, t: int, deadline: float | None) -> float | None:
        """Sound certificates split for ``certify_time`` per level (t = 1, complete by one box per
        pixel, at least a minute); other methods run to the input's deadline."""
        if method.guarantee != "sound":
            return deadline
        limit = max(T1_CERTIFY_SECONDS, self.budget.certify_time) if t == 1 else self.budget.certify_time
        own = time.monotonic() + limit
        return own if deadline is None else min(own, deadline)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


@dataclass
class _InProcess:
    """The local executor's worker: the driver's own search, its updates straight to the listeners."""

    driver: Driver
    x: np.ndarray
    run_deadline: float | None

    def run(self, pos: int, item: tuple[SampleState, float | None], emit: Callable[[Any], None]) -> SampleState:
        state, _ = item
        self.driver._search(pos, self.x[pos], state, self.run_deadline)
        return state
