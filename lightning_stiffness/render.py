"""Deprecated home of the pixel heatmaps, kept so that ``from lightning_stiffness.render import ...``
goes on working: the code lives in :mod:`lightning_stiffness.viz` (``viz.colormap`` and ``viz.raster``)."""

from lightning_stiffness.viz.colormap import BLUE, NAN_GREY, RED, WHITE, colorize
from lightning_stiffness.viz.raster import colorbar, heatmap, sort_by_label, with_colorbar

__all__ = ["BLUE", "NAN_GREY", "RED", "WHITE", "colorbar", "colorize", "heatmap", "sort_by_label", "with_colorbar"]
