"""Matrices as pixel images with torch only: one cell = a square of pixels, no text.

Images are ``uint8`` tensors of shape ``(3, H, W)`` (TensorBoard's ``CHW``), coloured with
:func:`~lightning_stiffness.viz.colormap.colorize`. :mod:`lightning_stiffness.viz.labelled` adds a
title, axis labels, ticks and a numbered colour bar around them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_stiffness.viz.colormap import VMAX, VMIN, colorize

__all__ = ["colorbar", "heatmap", "sort_by_label", "with_colorbar"]


def heatmap(
    matrix: Tensor,
    *,
    vmin: float = VMIN,
    vmax: float = VMAX,
    boundaries: list[int] | None = None,
    cell_pixels: int | None = None,
    target_size: int = 320,
) -> Tensor:
    """Colour-mapped ``(3, H, W)`` image of ``matrix`` with each cell ``cell_pixels`` wide
    (default: about ``target_size`` pixels in all) and black lines before each boundary row
    and column."""
    rows, cols = matrix.shape
    scale = cell_pixels or max(1, target_size // max(rows, cols))
    image = colorize(matrix, vmin, vmax).repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    for b in boundaries or []:
        if 0 < b < rows:
            image[:, b * scale, :] = 0
        if 0 < b < cols:
            image[:, :, b * scale] = 0
    return image


def sort_by_label(matrix: Tensor, labels: Tensor) -> tuple[Tensor, list[int]]:
    """Rows and columns reordered by label (stable), and where each new label starts."""
    order = torch.argsort(labels.cpu(), stable=True)
    sorted_labels = labels.cpu()[order]
    change = (sorted_labels[1:] != sorted_labels[:-1]).nonzero().flatten() + 1
    m = matrix.cpu()[order][:, order]
    return m, change.tolist()


def colorbar(height: int = 256, width: int = 16, vmin: float = VMIN, vmax: float = VMAX) -> Tensor:
    """A vertical colour bar ``(3, height, width)``: vmax at the top, vmin at the bottom."""
    values = torch.linspace(vmax, vmin, height).unsqueeze(1).expand(height, width)
    return colorize(values, vmin, vmax)


def with_colorbar(image: Tensor, vmin: float = VMIN, vmax: float = VMAX, gap: int = 6) -> Tensor:
    """``image`` with a colour bar of the same height on its right (white gap between)."""
    _, h, _ = image.shape
    bar = colorbar(h, max(8, h // 20), vmin, vmax)
    spacer = torch.full((3, h, gap), 255, dtype=torch.uint8)
    return torch.cat([image, spacer, bar], dim=2)
