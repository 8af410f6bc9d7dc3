"""Every generated test re-checked at the end, in one batch through onnxruntime: its changed pixels
recounted against the clean input (a coverage test within ``--max-l0``), its label recomputed by the
model's ordinary input path, and what it covers recomputed; then the targets each test newly covers,
in order, and the coverage-against-L0 curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l0tre_core import flips


@dataclass
class GeneratedTest:
    pos: int  # position of the source input in the data
    kind: str  # adversarial | coverage
    units: np.ndarray  # changed pixels [k]
    values: np.ndarray  # their values [k, C]
    label_before: int
    label_after: int
    level: int = 0  # adversarial: the search level t; coverage tests: 0
    source: str = "coverage"  # adversarial: sweep | union | targeted
    target: int = -1
    target_name: str = ""
    new: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # targets newly covered (after verification)
    covers: np.ndarray | None = None  # every target it covers (after verification)

    @property
    def l0(self) -> int:
        return int(len(self.units))

    def image(self, x: np.ndarray) -> np.ndarray:
        adv = x[self.pos].copy()
        adv[self.units] = self.values
        return adv


def verify_tests(gen: Any, x: np.ndarray, clean_cov: np.ndarray, tests: list[GeneratedTest], max_l0: int,
                 batch: int = 512) -> tuple[list[GeneratedTest], int]:
    """The tests that hold, with ``covers`` and ``new`` set from the recomputation; and how many
    were dropped. Adversarial cases must still change the label; coverage tests must keep to
    ``max_l0`` and cover something new."""
    kept: list[GeneratedTest] = []
    dropped = 0
    seen = clean_cov.copy()
    for start in range(0, len(tests), batch):
        chunk = tests[start : start + batch]
        images = np.stack([t.image(x) for t in chunk])
        outputs = gen.classifier.outputs(images)
        covers = gen.criterion.covered(gen.pre(images))
        for t, img, out, cov in zip(chunk, images, outputs, covers):
            changed = np.flatnonzero(np.any(img != x[t.pos], axis=1))
            ok = len(changed) == t.l0 and int(np.argmax(out)) == t.label_after
            if t.kind == "adversarial":
                ok = ok and bool(flips(out[None], t.label_before)[0])
            else:
                ok = ok and 1 <= t.l0 <= max_l0 and bool((cov & ~seen).any())
            if not ok:
                dropped += 1
                continue
            t.covers = cov
            t.new = np.flatnonzero(cov & ~seen).astype(np.int64)
            seen |= cov
            kept.append(t)
    return kept, dropped


def coverage_curve(clean_cov: np.ndarray, masks: np.ndarray, l0: np.ndarray, k_max: int) -> list[dict[str, Any]]:
    """Coverage of the clean inputs together with the tests of L0 <= k, for k = 0..k_max."""
    curve = []
    for k in range(k_max + 1):
        use = l0 <= k
        cov = clean_cov | masks[use].any(axis=0) if use.any() else clean_cov
        curve.append({"l0": k, "coverage": float(cov.mean()), "tests": int(use.sum())})
    return curve
