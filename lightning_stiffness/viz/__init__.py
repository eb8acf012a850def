"""Visualisation: the one colour map, pixel heatmaps, labelled TensorBoard images and the
matplotlib figures of the report.

- :mod:`~lightning_stiffness.viz.colormap`: the diverging map on a fixed ``[-1, 1]`` used by everything.
- :mod:`~lightning_stiffness.viz.raster`: matrices as ``(3, H, W)`` pixel images (torch only).

Modules that draw with matplotlib import it lazily; importing this package needs only torch.
"""

from lightning_stiffness.viz.colormap import (
    BLUE,
    NAN_GREY,
    RED,
    VMAX,
    VMIN,
    WHITE,
    colorize,
    matplotlib_colormap,
    value_rgb,
)
from lightning_stiffness.viz.raster import colorbar, heatmap, sort_by_label, with_colorbar

__all__ = [
    "BLUE",
    "NAN_GREY",
    "RED",
    "VMAX",
    "VMIN",
    "WHITE",
    "colorbar",
    "colorize",
    "heatmap",
    "matplotlib_colormap",
    "sort_by_label",
    "value_rgb",
    "with_colorbar",
]
