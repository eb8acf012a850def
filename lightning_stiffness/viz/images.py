"""The images of one measurement, rendered once and sent to every logger that takes images.

Tags (``uint8`` ``(3, H, W)`` images):

- ``stiffness/class_matrix/<kind>``: the ``(C, C)`` class stiffness matrix ``C[a, b]`` of paper
  v1 Eq. 6 (x: class ``a`` of ``g_1``, the example the gradient step is taken on; y: class ``b`` of
  ``g_2``), fixed ``[-1, 1]``, reordered by super-class with borders when super-classes are known;
- ``stiffness/matrix_by_class/<kind>``: the ``(N, N)`` stiffness matrix of the probe examples
  sorted by class, class borders drawn. With ``N`` above ``MAX_EXAMPLES_PIXELS`` it is shown at
  reduced resolution: each pixel is the mean of an ``f × f`` block of pairs
  (``f = ceil(N / MAX_EXAMPLES_PIXELS)``), which the title says;
- ``stiffness/distance/<space>``: stiffness vs distance (drawn with PIL, like the heatmaps).

A measurement without class statistics (targets that are not class labels,
``Measurement.class_statistics`` ``False``: empty ``0×0`` class matrices) has no class-matrix
images; its ``N×N`` matrices are shown in probe order (``stiffness/matrix/<kind>``), and its
distance charts show the curves over all pairs instead of within/between classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_stiffness.analytics import reorder_by_superclass
from lightning_stiffness.measurement import Measurement, split_key
from lightning_stiffness.viz.chart import distance_chart
from lightning_stiffness.viz.labelled import LabelledImage, block_ticks, class_ticks, have_pil, labelled_heatmap
from lightning_stiffness.viz.labels import (
    KIND_TITLES,
    XLABEL,
    XLABEL_EXAMPLES,
    XLABEL_PROBE_ORDER,
    YLABEL,
    YLABEL_EXAMPLES,
    YLABEL_PROBE_ORDER,
)
from lightning_stiffness.viz.raster import sort_by_label

__all__ = [
    "MAX_EXAMPLES_PIXELS",
    "block_mean",
    "class_matrix_image",
    "distance_charts",
    "examples_matrix_image",
    "has_class_statistics",
    "measurement_images",
]

#: Largest side, in matrix cells, of the N×N image before it is block-averaged.
MAX_EXAMPLES_PIXELS = 256


def has_class_statistics(m: Measurement) -> bool:
    """Whether ``m`` has class statistics to draw: its targets were class labels (or groups) and
    its class matrices are not empty (``analyze_without_classes`` leaves them ``0×0``)."""
    return bool(getattr(m, "class_statistics", True)) and m.class_sign.numel() > 0 and m.class_cos.numel() > 0


def _where(m: Measurement) -> str:
    return f"step {m.step}, {'+'.join(m.split_names)}"


def class_matrix_image(
    m: Measurement,
    kind: str,
    superclasses: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelledImage:
    """The labelled class stiffness matrix of ``kind`` (``sign`` or ``cos``). A measurement
    without class statistics has none: a clear ``ValueError`` (see :func:`has_class_statistics`)."""
    if not has_class_statistics(m):
        raise ValueError(
            f"the measurement at step {m.step} has no class statistics (its targets were not class labels): "
            "no class matrix to draw"
        )
    matrix = m.class_sign if kind == "sign" else m.class_cos
    classes = list(range(matrix.shape[0]))
    boundaries: list[int] | None = None
    if superclasses is not None:
        matrix, order, boundaries = reorder_by_superclass(matrix, superclasses)
        classes = order.tolist()
    title = f"{KIND_TITLES[kind]}, {_where(m)}" + (" (by super-class)" if boundaries is not None else "")
    return labelled_heatmap(
        matrix,
        title=title,
        xlabel=XLABEL,
        ylabel=YLABEL,
        ticks=class_ticks(classes, class_names),
        boundaries=boundaries,
    )


def block_mean(matrix: Tensor, factor: int) -> Tensor:
    """``matrix`` with each ``factor × factor`` block replaced by its mean over finite entries
    (blocks at the ragged edge average what they hold; a block without finite entries is NaN)."""
    if factor <= 1:
        return matrix
    x = matrix.float()
    finite = torch.isfinite(x)
    sums = F.avg_pool2d(x.nan_to_num(0.0).masked_fill(~finite, 0.0)[None, None], factor, ceil_mode=True)
    counts = F.avg_pool2d(finite.float()[None, None], factor, ceil_mode=True)
    return (sums / counts)[0, 0]


def examples_matrix_image(
    m: Measurement,
    kind: str,
    class_names: Sequence[str] | None = None,
    max_pixels: int = MAX_EXAMPLES_PIXELS,
) -> LabelledImage:
    """The labelled ``(N, N)`` stiffness matrix sorted by class, block-averaged above ``max_pixels``.
    Without class statistics (the labels are not classes) the examples stay in probe order, with
    no class borders or class ticks."""
    full = m.sign if kind == "sign" else m.cos
    by_class = has_class_statistics(m)
    if by_class:
        ordered, bounds = sort_by_label(full, m.labels)
    else:
        ordered, bounds = full.cpu(), []
    n = ordered.shape[0]
    factor = max(1, math.ceil(n / max_pixels))
    note = f", each pixel the mean of {factor}x{factor} pairs" if factor > 1 else ""
    shown = block_mean(ordered, factor)
    shown_bounds = sorted({math.floor(b / factor) for b in bounds} - {0})
    size = shown.shape[0]
    ticks: list[tuple[float, str]] = []
    if by_class:
        present = torch.unique(m.labels.cpu()).tolist()  # sorted: the class of each block in order
        ticks = [(pos / factor, label) for pos, label in block_ticks(bounds, n, present, class_names)]
    return labelled_heatmap(
        shown,
        title=f"{KIND_TITLES[kind]}, {_where(m)}\n{n} probe examples{note}",
        xlabel=XLABEL_EXAMPLES if by_class else XLABEL_PROBE_ORDER,
        ylabel=YLABEL_EXAMPLES if by_class else YLABEL_PROBE_ORDER,
        ticks=[(min(p, size), t) for p, t in ticks],
        boundaries=shown_bounds,
    )


def measurement_images(
    m: Measurement,
    superclasses: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    distance_figures: bool = True,
) -> dict[str, Tensor]:
    """Every image of one measurement by tag (see the module docstring): without class
    statistics, no class-matrix images and the ``N×N`` matrices under ``stiffness/matrix/<kind>``."""
    images: dict[str, Tensor] = {}
    for kind in ("sign", "cos"):
        if has_class_statistics(m):
            images[f"stiffness/class_matrix/{kind}"] = class_matrix_image(m, kind, superclasses, class_names).image
            images[f"stiffness/matrix_by_class/{kind}"] = examples_matrix_image(m, kind, class_names).image
        else:
            images[f"stiffness/matrix/{kind}"] = examples_matrix_image(m, kind).image
    if distance_figures and have_pil():  # without Pillow only the unlabelled heatmaps
        images.update({tag: chart.image for tag, chart in distance_charts(m).items()})
    return images


def distance_charts(m: Measurement) -> dict[str, LabelledImage]:
    """Stiffness vs distance per space (PIL, :func:`~lightning_stiffness.viz.chart.distance_chart`):
    within/between-class curves of both kinds (all pairs when the measurement has no class
    statistics), measured ξ solid, a censored or extrapolated one dotted as "xi >= bound" (PIL's
    default font has no ξ)."""
    curve_keys = [(split_key(key), curve) for key, curve in m.curves.items()]
    length_keys = [(split_key(key), xi) for key, xi in m.critical_lengths.items()]
    shown_pairs = ("within", "between") if has_class_statistics(m) else ("all",)
    out = {}
    for space in sorted({s for (s, _, pairs), _ in curve_keys if pairs in shown_pairs}):
        curves = {
            f"{kind} {pairs}" if pairs != "all" else f"{kind} all pairs": c
            for (s, kind, pairs), c in curve_keys
            if s == space and pairs in shown_pairs
        }
        lengths = {f"{kind} {est}": xi for (s, kind, est), xi in length_keys if s == space and kind == "sign"}
        out[f"stiffness/distance/{space}"] = distance_chart(
            curves, lengths, title=f"stiffness vs distance, {space}, step {m.step}", xlabel=_distance_label(space)
        )
    return out


def _distance_label(space: str) -> str:
    if space == "input":
        return "input-space cosine distance 1 - cos(x_1, x_2)"
    return f"cosine distance 1 - cos(R_1, R_2) of {space}"
