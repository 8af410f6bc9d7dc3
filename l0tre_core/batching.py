"""The model-call batch size, chosen from the search's own calls.

The best batch size depends on the model, the provider and the machine (a small MLP keeps getting
faster up to thousands of rows; a CNN on two cores peaks near 256 and slows beyond, as its
activations leave the cache), so it is measured rather than guessed: while tuning, each candidate
size serves the calls that need at least that many rows until it has run enough of them to be
timed; after two rounds the size with the lowest per-row time of its fastest call is kept (the
fastest call, not the mean: on a shared machine other processes only ever add time, so the minimum
is the estimate least disturbed by them). Nothing is run for the sake of tuning: every timed call
is one the search needed anyway.
"""

from __future__ import annotations

CANDIDATES = (64, 128, 256, 512, 1024, 2048, 4096)
ROUNDS = 2  # rounds over the candidates: load that changes during one round is averaged out
TRIAL_ROWS = 4096  # rows a candidate runs per round (at least two calls of it)
STUCK_CALLS = 64  # calls too small to time the candidate on trial before settling without it


class BatchTuner:
    """Picks the rows per model call; ``fixed`` (a user's ``--batch-size``) turns tuning off."""

    def __init__(self, fixed: int | None = None, candidates: tuple[int, ...] = CANDIDATES,
                 rounds: int = ROUNDS, trial_rows: int = TRIAL_ROWS) -> None:
        self.fixed = fixed
        self.candidates = tuple(candidates)
        self.rounds = rounds
        self.trial_rows = trial_rows
        self.rows = dict.fromkeys(self.candidates, 0)
        self.best = dict.fromkeys(self.candidates, float("inf"))  # fastest seconds per row seen
        self._trial = 0  # index into the candidates x rounds schedule
        self._round_rows = 0
        self._stuck = 0
        self._chosen: int | None = fixed

    @property
    def chosen(self) -> int | None:
        """The settled size (or the fixed one); None while tuning."""
        return self._chosen

    def size(self, rows: int) -> int:
        """Rows per model call for a group of ``rows`` inputs."""
        chosen = self.chosen
        if chosen is not None:
            return chosen
        trial = self.candidates[self._trial % len(self.candidates)]
        if rows < self.candidates[0]:
            return rows  # a handful of candidates (the random search): says nothing about sizes
        if rows < trial:
            # a group too small to time this size: it runs in one call; a search that never makes
            # groups this large (t = 1 on a small image) settles among the sizes it could time
            self._stuck += 1
            if self._stuck >= STUCK_CALLS:
                self._next()
            return rows
        return trial

    def record(self, rows: int, seconds: float) -> None:
        """The time of one model call of ``rows`` inputs."""
        if self.chosen is not None:
            return
        trial = self.candidates[self._trial % len(self.candidates)]
        if rows != trial:
            return
        self._stuck = 0
        self.rows[trial] += rows
        self.best[trial] = min(self.best[trial], seconds / rows)
        self._round_rows += rows
        if self._round_rows >= max(self.trial_rows, 2 * trial):
            self._next()

    def _next(self) -> None:
        self._trial += 1
        self._round_rows = 0
        self._stuck = 0
        if self._trial >= len(self.candidates) * self.rounds:
            timed = [c for c in self.candidates if self.rows[c]]
            self._chosen = min(timed, key=lambda c: self.best[c]) if timed else self.candidates[0]
