"""``coverage.png``: coverage against the L0 budget of the tests (with the paper's MNIST points for
reference, as published, not re-measured)."""

from __future__ import annotations

from typing import Any

from l0tre_core import png, pyplot

PAPER_MNIST = {3: 0.90, 8: 0.95, 20: 0.98}  # Ruan et al. 2019, case study five (DeepConcolic, MNIST)


def coverage_png(cov: dict[str, Any]) -> bytes:
    curve = cov["curve"]
    fig, ax = pyplot().subplots(figsize=(6.4, 3.8), dpi=110, layout="constrained")
    ks = [c["l0"] for c in curve]
    ax.step(ks, [c["coverage"] for c in curve], where="post", lw=2, color="#1f6fb2",
            label=f"{cov['criterion'].upper()} coverage: clean inputs + tests with L0 <= k")
    ax.axvline(cov["max_l0"], color="#999", ls=":", lw=1)
    ax.plot(list(PAPER_MNIST), list(PAPER_MNIST.values()), "s", color="#d1495b", label="paper, MNIST (their model and set)")
    ax.set_xlabel("L0 budget k (pixels a test changes)")
    ax.set_ylabel("coverage")
    ax.set_ylim(min(0.8, min(c["coverage"] for c in curve) - 0.02), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{cov['criterion'].upper()} coverage against L0 ({cov['targets']:,} targets)", fontsize=10)
    return png(fig)
