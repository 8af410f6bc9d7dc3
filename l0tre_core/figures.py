"""Figures as PNG bytes, drawn off-screen: every figure l0tre writes goes through here.

``pyplot()`` is ``matplotlib.pyplot`` with the non-interactive Agg backend selected first (no
display needed, nothing opens a window); ``png(fig)`` renders a figure and closes it.
"""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot``, with the Agg backend (imported on first use: matplotlib is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        pyplot().close(fig)
    return buf.getvalue()
