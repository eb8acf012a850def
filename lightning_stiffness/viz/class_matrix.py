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
from lightning_stiffness.viz.figure import new_figure, no_data_note
from lightning_stiffness.viz.labels import COLORBAR_TICKS, KIND_TITLES, XLABEL, YLABEL

__all__ = ["class_matrix_grid"]


def class_matrix_grid(run: Run, kind: str = "sign", steps: Sequence[int] | None = None) -> Any:
    """v1 Figs 3-7: class stiffness matrices at up to four stages of training, on a fixed
    [-1, 1] diverging scale; CIFAR-100 style runs are reordered by super-class with borders.
    Measurements without class statistics (targets that are not class labels: empty 0×0
    matrices) are left out; a grid with nothing to draw says why ("no data")."""
    with_classes = [m for m in run.measurements if m.class_sign.numel() > 0]
    by_step = {m.step: m for m in with_classes}
    chosen = [s for s in (steps or pick_steps(with_classes)) if s in by_step][:4]
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
    elif not with_classes:
        no_data_note(
            fig.add_subplot(1, 1, 1), "the measurements have no class statistics (targets were not class labels)"
        )
    else:
        wanted = ", ".join(str(s) for s in steps) if steps else "none"
        no_data_note(fig.add_subplot(1, 1, 1), f"no measurement at the requested steps ({wanted})")
    fig.suptitle(f"Class stiffness matrices — {run.name}")
    return fig
