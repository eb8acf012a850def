"""The visualisation package: one colour map everywhere, labelled heatmaps, image logging."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lightning_stiffness.viz import colorize, matplotlib_colormap, value_rgb


def test_old_render_path_is_the_viz_code() -> None:
    from lightning_stiffness import render, viz

    for name in ("colorize", "heatmap", "sort_by_label", "colorbar", "with_colorbar", "BLUE", "WHITE", "RED"):
        assert getattr(render, name) is getattr(viz, name), name
    from lightning_stiffness import figures
    from lightning_stiffness.viz import curves, figure

    assert figures.distance_figure is curves.distance_figure and figures.new_figure is figure.new_figure
    assert figures.have_matplotlib is figure.have_matplotlib


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_matplotlib_figures_use_the_same_colours_as_the_images() -> None:
    """The report's colour map gives the RGB that TensorBoard's images give, value for value."""
    cmap = matplotlib_colormap()
    from matplotlib.colors import Normalize

    norm = Normalize(vmin=-1, vmax=1)
    for value in (-1.0, -0.5, 0.0, 0.5, 1.0):
        rgba = cmap(norm(value))
        assert tuple(round(c * 255) for c in rgba[:3]) == value_rgb(value), value
    # between grid points the table is within one entry (2/256 in value) of the exact map
    values = torch.linspace(-1, 1, 1001)
    exact = colorize(values.unsqueeze(0))[:, 0, :].T.int()
    table = torch.tensor([cmap(norm(v))[:3] for v in values.tolist()]).mul(255).round().int()
    assert (exact - table).abs().max() <= 3
    assert tuple(round(c * 255) for c in cmap(float("nan"))[:3]) == value_rgb(float("nan"))


def test_claims_take_their_data_from_the_data_layer_not_from_plotting() -> None:
    """report/claims.py imports no plotting module (its selectors live in report/series.py)."""
    import ast
    from pathlib import Path

    import lightning_stiffness.report.claims as claims

    tree = ast.parse(Path(claims.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    plotting = {m for m in imported if m.startswith(("matplotlib", "lightning_stiffness.viz")) or m.endswith("plots")}
    assert not plotting, plotting
    assert "lightning_stiffness.report.series" in imported


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_report_class_matrix_grid_uses_the_shared_map_and_wording() -> None:
    from pathlib import Path

    from matplotlib.colors import Normalize

    from lightning_stiffness.report import load_run
    from lightning_stiffness.viz.class_matrix import class_matrix_grid
    from lightning_stiffness.viz.labels import XLABEL, YLABEL

    run = load_run(Path(__file__).parent / "fixtures" / "run-0.1.0")
    fig = class_matrix_grid(run, "sign")
    panels = [ax for ax in fig.axes if ax.images]
    assert panels, "no class-matrix panel drawn"
    for ax in panels:
        mappable = ax.images[0]
        assert mappable.get_clim() == (-1.0, 1.0)
        rgba = mappable.get_cmap()(Normalize(-1, 1)(0.5))
        assert tuple(round(c * 255) for c in rgba[:3]) == value_rgb(0.5)
        assert ax.get_xlabel() == XLABEL and ax.get_ylabel() == YLABEL
    bar = next(ax for ax in fig.axes if not ax.images)
    assert [t.get_text().replace("−", "-") for t in bar.get_yticklabels()] == ["-1", "-0.5", "0", "0.5", "1"]
