"""The one colour map of the package: a blue–white–red diverging map on a fixed ``[-1, 1]``.

Stiffness values are bounded, ``sign`` and ``cos`` stiffness both lie in ``[-1, 1]``, so every
image, TensorBoard heatmap and report figure alike, maps a value ``v`` to the same colour:

    t = clamp((v - mid) / half_width, -1, 1),   mid = (vmin + vmax) / 2,  half_width = (vmax - vmin) / 2
    rgb(v) = WHITE + max(-t, 0) · (BLUE - WHITE) + max(t, 0) · (RED - WHITE)

(linear from blue at ``vmin`` through white at the middle to red at ``vmax``); non-finite values
are grey. :func:`colorize` is the single implementation; :func:`matplotlib_colormap` samples it,
so matplotlib figures show the same RGB for the same value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["BLUE", "NAN_GREY", "RED", "VMAX", "VMIN", "WHITE", "colorize", "matplotlib_colormap", "value_rgb"]

#: Anchor colours of the diverging map (RGB in [0, 1]): blue at vmin, white at 0, red at vmax.
BLUE = (0.13, 0.40, 0.67)
WHITE = (0.97, 0.97, 0.97)
RED = (0.70, 0.09, 0.17)
NAN_GREY = (0.6, 0.6, 0.6)

#: The fixed range of stiffness values.
VMIN, VMAX = -1.0, 1.0

#: Colours in :func:`matplotlib_colormap`'s lookup table. Odd, so that -1, -0.5, 0, 0.5 and 1
#: fall exactly on table entries (matplotlib picks entry ``floor(x · N)`` for ``x`` in [0, 1]).
LUT_SIZE = 257


def colorize(matrix: Tensor, vmin: float = VMIN, vmax: float = VMAX) -> Tensor:
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


def value_rgb(value: float, vmin: float = VMIN, vmax: float = VMAX) -> tuple[int, int, int]:
    """The ``uint8`` RGB of one value (what :func:`colorize` gives that cell)."""
    r, g, b = colorize(torch.tensor([[value]]), vmin, vmax)[:, 0, 0].tolist()
    return (r, g, b)


def matplotlib_colormap() -> Any:
    """:func:`colorize` as a matplotlib ``ListedColormap`` for ``vmin=-1, vmax=1`` (needs
    matplotlib): ``LUT_SIZE`` colours sampled on an even grid of [-1, 1], grey for NaN."""
    from matplotlib.colors import ListedColormap

    grid = torch.linspace(VMIN, VMAX, LUT_SIZE).unsqueeze(0)
    table = colorize(grid)[:, 0, :].T.float() / 255
    return ListedColormap(table.tolist(), name="stiffness").with_extremes(bad=NAN_GREY)
