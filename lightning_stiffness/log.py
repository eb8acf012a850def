"""Send a measurement to Lightning loggers: scalars to every logger, images, histograms and
figures to TensorBoard (``logger.experiment`` is a no-op on ranks other than 0)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from lightning_stiffness.analysis import scalar_metrics
from lightning_stiffness.analytics import reorder_by_superclass
from lightning_stiffness.measurement import Measurement, split_key
from lightning_stiffness.viz.curves import distance_figure
from lightning_stiffness.viz.figure import have_matplotlib
from lightning_stiffness.viz.raster import heatmap, sort_by_label, with_colorbar


def tensorboard_writers(loggers: Sequence[Logger]) -> list[Any]:
    """The ``SummaryWriter`` of every attached TensorBoard logger."""
    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def log_scalars(loggers: Sequence[Logger], m: Measurement, extra: dict[str, float], step: int) -> None:
    metrics = {**scalar_metrics(m), **extra}
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def custom_scalars_layout(kinds: Sequence[str] = ("sign", "cos")) -> dict[str, Any]:
    """TensorBoard custom-scalars layout: within/between/all on one chart per kind, ξ (measured
    only), the lower bounds of ξ where the data do not cross zero (a separate chart), cost."""
    charts: dict[str, Any] = {
        f"{kind} stiffness": ["Multiline", [f"stiffness/{kind}/(within|between|all)$"]] for kind in kinds
    }
    charts["critical length ξ"] = ["Multiline", ["stiffness/critical_length/.*"]]
    charts["ξ ≥ (no zero crossing in the data)"] = ["Multiline", ["stiffness/critical_length_lower_bound/.*"]]
    charts["gradient coherence"] = ["Multiline", ["stiffness/(m_coherence|gradient_diversity)"]]
    charts["cost"] = ["Multiline", ["stiffness/cost/.*"]]
    return {"stiffness": charts}


def log_images(
    writers: Sequence[Any],
    m: Measurement,
    step: int,
    superclasses: Sequence[int] | None = None,
) -> None:
    """Class matrices (fixed [-1, 1] diverging map), the N×N matrices sorted by class with
    class boundaries, a histogram of off-diagonal cosine stiffness, stiffness vs distance."""
    if not writers:
        return
    images: dict[str, torch.Tensor] = {}
    for kind, class_matrix, full in (("sign", m.class_sign, m.sign), ("cos", m.class_cos, m.cos)):
        boundaries: list[int] | None = None
        if superclasses is not None:
            class_matrix, _, boundaries = reorder_by_superclass(class_matrix, superclasses)
        images[f"stiffness/class_matrix/{kind}"] = with_colorbar(heatmap(class_matrix, boundaries=boundaries))
        ordered, label_bounds = sort_by_label(full, m.labels)
        images[f"stiffness/matrix_by_class/{kind}"] = with_colorbar(heatmap(ordered, boundaries=label_bounds))
    off_diagonal = m.cos[~torch.eye(m.num_examples, dtype=torch.bool)]
    figures = _distance_figures(m) if have_matplotlib() else {}
    for writer in writers:
        for tag, image in images.items():
            writer.add_image(tag, image, global_step=step, dataformats="CHW")
        writer.add_histogram("stiffness/offdiagonal_cos", off_diagonal, global_step=step)
        for tag, fig in figures.items():
            writer.add_figure(tag, fig, global_step=step, close=False)
        writer.flush()


def _distance_figures(m: Measurement) -> dict[str, Any]:
    curve_keys = [(split_key(key), curve) for key, curve in m.curves.items()]
    length_keys = [(split_key(key), xi) for key, xi in m.critical_lengths.items()]
    out = {}
    for space in sorted({s for (s, _, _), _ in curve_keys}):
        curves = {f"{kind} {pairs}": c for (s, kind, pairs), c in curve_keys if s == space and pairs != "all"}
        # measured ξ as a solid line, a censored/extrapolated one as "ξ ≥ bound" (see distance_figure)
        lengths = {f"{kind} {est}": xi for (s, kind, est), xi in length_keys if s == space and kind == "sign"}
        out[f"stiffness/distance/{space}"] = distance_figure(curves, lengths, title=f"{space}, step {m.step}")
    return out
