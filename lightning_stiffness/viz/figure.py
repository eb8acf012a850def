"""Matplotlib without global state (optional dependency: ``pip install lightning-stiffness[examples]``)."""

from __future__ import annotations

from typing import Any


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(width: float = 5.0, height: float = 3.5) -> Any:
    """A matplotlib Figure that does not need a display (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig
