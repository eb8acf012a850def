"""The paper's image preprocessing as a torchvision transform: per-pixel standardisation with
training statistics (:func:`pixel_statistics`), then unit L2 norm (:class:`StandardizeUnitNorm`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_stiffness.preprocessing import standardize_to_unit_sphere

__all__ = ["StandardizeUnitNorm", "pixel_statistics"]


class StandardizeUnitNorm:
    """The paper's input preprocessing as a transform of one image: ``x ← (x − mean) / std`` per
    pixel (training statistics, std floored), then ``x ← x / ‖x‖₂`` so every image lies on the unit
    sphere; :func:`lightning_stiffness.preprocessing.standardize_to_unit_sphere` of a batch of one.

    Args:
        mean, std: per-pixel statistics, shape of one image (e.g. ``(C, H, W)``).
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean = mean.float()
        self.std = std.float()

    def __call__(self, x: Tensor) -> Tensor:
        return standardize_to_unit_sphere(x.unsqueeze(0), self.mean, self.std)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.mean.shape)})"


def pixel_statistics(images: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per-pixel mean and standard deviation of ``images`` (``(N, ...)``, uint8 in [0, 255] or
    float in [0, 1]) on the [0, 1] scale of ``ToTensor``, accumulated in float64 in chunks."""
    if images.shape[0] == 0:
        raise ValueError("no images to compute statistics from")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64) / scale
        total += block.sum(0)
        squares += (block * block).sum(0)
    n = images.shape[0]
    mean = total / n
    var = (squares / n - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def _image_transform(mean: Tensor, std: Tensor) -> Callable[[Any], Tensor]:
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), StandardizeUnitNorm(mean, std)])
