"""Matplotlib without global state (optional dependency: ``pip install lightning-stiffness[examples]``)."""

from __future__ import annotations

from typing import Any

__all__ = ["have_matplotlib", "new_figure", "no_data_note"]


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


def no_data_note(ax: Any, reason: str) -> None:
    """Write "no data" and why in the middle of an empty panel, so that an empty plot is never
    read as a flat or missing result."""
    ax.text(
        0.5, 0.5, f"no data\n{reason}", transform=ax.transAxes, ha="center", va="center", fontsize=8, color="dimgray"
    )
