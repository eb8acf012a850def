"""The report's class-matrix figure (matplotlib), in the package's one colour map and wording.

TensorBoard's labelled images of the same matrices are drawn without matplotlib by
:mod:`lightning_stiffness.viz.labelled`; both use :mod:`~lightning_stiffness.viz.colormap` and
:mod:`~lightning_stiffness.viz.labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_stiffness.analytics import reorder_by_superclass
from lightning_stiffness.report.runs import Run
from lightning_stiffness.report.series import pick_steps
from lightning_stiffness.viz.colormap import VMAX, VMIN, matplotlib_colormap
from lightning_stiffness.viz.figure import new_figure
from lightning_stiffness.viz.labels import COLORBAR_TICKS, KIND_TITLES, XLABEL, YLABEL


def class_matrix_grid(run: Run, kind: str = "sign", steps: Sequence[int] | None = None) -> Any:
    """v1 Figs 3-7: class stiffness matrices at up to four stages of training, on a fixed
    [-1, 1] diverging scale; CIFAR-100 style runs are reordered by super-class with borders."""
    by_step = {m.step: m for m in run.measurements}
    chosen = [s for s in (steps or pick_steps(run.measurements)) if s in by_step][:4]
    superclasses = run.info.get("superclasses")
    fig = new_figure(8.0, 7.0)
    image = None
    for k, step in enumerate(chosen):
        m = by_step[step]
        matrix = m.class_sign if kind == "sign" else m.class_cos
        borders: list[int] = []
        if superclasses:
            matrix, _, borders = reorder_by_superclass(matrix, superclasses)
        ax = fig.add_subplot(2, 2, k + 1)
        image = ax.imshow(matrix.numpy(), cmap=matplotlib_colormap(), vmin=VMIN, vmax=VMAX, interpolation="nearest")
        for b in borders:
            ax.axhline(b - 0.5, color="black", linewidth=0.6)
            ax.axvline(b - 0.5, color="black", linewidth=0.6)
        ax.set_title(f"{KIND_TITLES[kind]}, step {step}", fontsize=9)
        ax.set_xlabel(XLABEL, fontsize=8)
        ax.set_ylabel(YLABEL, fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, ticks=COLORBAR_TICKS, format="%g")
    fig.suptitle(f"Class stiffness matrices — {run.name}")
    return fig
