"""Deprecated home of the matplotlib helpers, kept so that existing imports go on working: the
code lives in :mod:`lightning_stiffness.viz` (``viz.figure`` and ``viz.curves``)."""

from lightning_stiffness.viz.curves import distance_figure
from lightning_stiffness.viz.figure import have_matplotlib, new_figure

__all__ = ["distance_figure", "have_matplotlib", "new_figure"]
