"""Line figures (matplotlib): stiffness vs distance, and the report's curves over training and
learning rate. Data selection lives in :mod:`lightning_stiffness.report.series`; these functions only draw."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning_stiffness.analytics import BinnedCurve, CriticalLength
from lightning_stiffness.viz.figure import new_figure


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
