"""Render stiffness matrices as images: pure torch, no plotting library needed.

Heatmaps use a fixed blue–white–red diverging colour map on ``[vmin, vmax]`` (the paper's
class matrices use ``[-1, 1]``), NaN cells grey, and optional black lines at class
boundaries. Images are ``uint8`` tensors of shape ``(3, H, W)`` (TensorBoard's ``CHW``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLUE", "NAN_GREY", "RED", "WHITE", "colorbar", "colorize", "heatmap", "sort_by_label", "with_colorbar"]

#: Anchor colours of the diverging map (RGB in [0, 1]): blue at vmin, white at 0, red at vmax.
BLUE = (0.13, 0.40, 0.67)
WHITE = (0.97, 0.97, 0.97)
RED = (0.70, 0.09, 0.17)
NAN_GREY = (0.6, 0.6, 0.6)


def colorize(matrix: Tensor, vmin: float = -1.0, vmax: float = 1.0) -> Tensor:
    """Map a 2-D matrix to an RGB ``uint8`` image ``(3, H, W)`` with the diverging map."""
    if matrix.dim() != 2:
        raise ValueError(f"colorize expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    if not vmax > vmin:
        raise ValueError(f"vmax ({vmax}) must be greater than vmin ({vmin})")
    m = matrix.detach().float().cpu()
    nan = ~torch.isfinite(m)
    mid = 0.5 * (vmin + vmax)
    t = ((m.nan_to_num(mid) - mid) / (0.5 * (vmax - vmin))).clamp(-1.0, 1.0)  # in [-1, 1]
    blue, white, red = (torch.tensor(c).view(3, 1, 1) for c in (BLUE, WHITE, RED))
    neg = (-t).clamp(min=0).unsqueeze(0)
    pos = t.clamp(min=0).unsqueeze(0)
    rgb = white + neg * (blue - white) + pos * (red - white)
    rgb = torch.where(nan.unsqueeze(0), torch.tensor(NAN_GREY).view(3, 1, 1), rgb)
    return (rgb * 255).round().to(torch.uint8)


def heatmap(
    matrix: Tensor,
    *,
    vmin: float = -1.0,
    vmax: float = 1.0,
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


def colorbar(height: int = 256, width: int = 16, vmin: float = -1.0, vmax: float = 1.0) -> Tensor:
    """A vertical colour bar ``(3, height, width)``: vmax at the top, vmin at the bottom."""
    values = torch.linspace(vmax, vmin, height).unsqueeze(1).expand(height, width)
    return colorize(values, vmin, vmax)


def with_colorbar(image: Tensor, vmin: float = -1.0, vmax: float = 1.0, gap: int = 6) -> Tensor:
    """``image`` with a colour bar of the same height on its right (white gap between)."""
    _, h, _ = image.shape
    bar = colorbar(h, max(8, h // 20), vmin, vmax)
    spacer = torch.full((3, h, gap), 255, dtype=torch.uint8)
    return torch.cat([image, spacer, bar], dim=2)
