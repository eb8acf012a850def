"""Matplotlib figures (optional dependency: ``pip install lightning-stiffness[examples]``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning_stiffness.analytics import BinnedCurve, CriticalLength

__all__ = ["distance_figure", "have_matplotlib", "new_figure"]


def have_matplotlib() -> bool:
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


def distance_figure(
    curves: Mapping[str, BinnedCurve],
    lengths: Mapping[str, CriticalLength] | None = None,
    *,
    title: str = "",
    xlabel: str = "input-space cosine distance 1 − cos(x₁, x₂)",
) -> Any:
    """Mean stiffness ± s.e.m. per distance bin, one line per curve, dashed ±1/0 guides
    (v1 Fig. 9) and a vertical marker per critical length (v3): solid at a measured ξ, dotted
    and labelled "ξ ≥" at the lower bound of a censored or extrapolated one (no crossing in the data)."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        keep = curve.count > 0
        x, y, e = curve.centers[keep].numpy(), curve.mean[keep].numpy(), curve.sem[keep].nan_to_num(0).numpy()
        (line,) = ax.plot(x, y, marker="o", markersize=3, label=name)
        ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.2)
    for value in (-1.0, 0.0, 1.0):
        ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)
    for name, xi in (lengths or {}).items():
        at = xi.bound_or_value
        if math.isfinite(at):
            style, relation = ("-", "=") if xi.crossed else (":", "≥")
            ax.axvline(at, color="black", linestyle=style, linewidth=1.0, label=f"ξ {name} {relation} {at:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("stiffness")
    ax.set_ylim(-1.05, 1.05)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
