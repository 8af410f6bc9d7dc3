"""``design.png``: each model's global robustness interval [lower, upper] on one axis.

One horizontal segment per model, from its global lower bound (marked with its guarantee) to its
global upper bound (witnessed): where two segments overlap along the axis, no model can be claimed
more robust than the other (``compare``); where one lies wholly to the right, it provably is.
"""

from __future__ import annotations

from l0tre_core import png, pyplot
from l0tre_design.compare import ModelBounds, claims

LOWER, UPPER, SPAN = "#1f5fa8", "#d1495b", "#9db8d9"
MAX_VERDICTS = 4  # pairwise verdicts written under the plot


def design_png(models: list[ModelBounds], inputs: int | None = None) -> bytes:
    n = len(models)
    finite = [m.upper for m in models if m.upper is not None]
    right = max([1.0, *(m.lower for m in models), *finite]) * 1.18
    verdicts = claims(models)[:MAX_VERDICTS] if n > 1 else []
    fig, ax = pyplot().subplots(figsize=(8, 1.0 * n + 2.0 + 0.25 * len(verdicts)), dpi=110, layout="constrained")
    for row, m in enumerate(models):
        y = n - 1 - row  # the first model (ranked first) on top
        up = right if m.upper is None else m.upper
        ax.plot([m.lower, up], [y, y], color=SPAN, linewidth=10, solid_capstyle="butt", zorder=2,
                label="interval holding the model's global robustness" if row == 0 else None)
        ax.plot([m.lower], [y], marker="|", markersize=22, markeredgewidth=3, color=LOWER, zorder=3,
                label="global lower bound (guarantee in brackets)" if row == 0 else None)
        ax.annotate(f"{m.lower:.2f} ({m.guarantee})", (m.lower, y), xytext=(0, -16), textcoords="offset points",
                    ha="center", va="top", fontsize=9, color=LOWER)
        if m.upper is None:
            ax.annotate("", (right, y), xytext=(max(m.lower, right * 0.9), y),
                        arrowprops={"arrowstyle": "->", "color": UPPER, "linewidth": 2}, zorder=3)
            ax.annotate("no finite upper bound\n(an input has no witness)", (right, y), xytext=(0, 12),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8.5, color=UPPER)
        else:
            ax.plot([m.upper], [y], marker="|", markersize=22, markeredgewidth=3, color=UPPER, zorder=3,
                    label="global upper bound (witnessed)" if not any(mm.upper is not None for mm in models[:row]) else None)
            ax.annotate(f"{m.upper:.2f}", (m.upper, y), xytext=(0, -16), textcoords="offset points",
                        ha="center", va="top", fontsize=9, color=UPPER)
    ax.set_yticks(range(n), [m.name for m in reversed(models)], fontsize=10)
    ax.set_ylim(-0.8, n - 0.2 + 0.5)
    ax.set_xlim(0, right)
    ax.set_xlabel("mean pixels that must change (global L0 robustness)")
    same = f"the same {inputs} inputs" if inputs else "the same inputs"
    ax.set_title(f"Global robustness of {n} model{'s' if n != 1 else ''} on {same}, same budget\n"
                 "overlapping intervals: no claim; an interval wholly to the right: provably more robust", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9, markerscale=0.5)
    if verdicts:
        text = "\n".join(("PROVEN: " if v.winner else "") + v.text for v in verdicts)
        fig.supxlabel(text, fontsize=8.5)
    return png(fig)
