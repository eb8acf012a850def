"""The paper's input preprocessing, defined once: standardise every feature, then project every
example to the unit sphere.

Fort et al. 2019 (arXiv:1901.09491) preprocess inputs to "zero mean and unit length" (v1 §2.3;
v3: "normalised to the unit sphere"): for examples ``x_n ∈ R^D`` and per-feature statistics
``μ_d``, ``σ_d`` (of the training split, or of the examples themselves)

    z_nd = (x_nd − μ_d) / max(σ_d, σ_min),        x̂_n = z_n / ‖z_n‖₂   (x̂_n = 0 if z_n = 0),

so that the cosine similarity of two inputs is ``x̂_1 · x̂_2`` and their distance
``1 − x̂_1 · x̂_2 = ½ ‖x̂_1 − x̂_2‖²``.

The floor ``σ_min = MIN_STD_FRACTION · σ_pool`` is relative to the pooled standard deviation of
all input values, so the result does not depend on the inputs' scale (0–255 pixels, [0, 1]
pixels, already-normalised vectors give the same ``x̂``). Without a floor a pixel that hardly
ever varies in training (MNIST's borders) would blow up the rare image that inks it. A feature
that is constant in the statistics stays exactly 0 for the examples the statistics came from.

Used by the demo (:mod:`lightning_stiffness.demo`), the experiments' datamodules
(:class:`lightning_stiffness.experiments.datamodules.StandardizeUnitNorm`) and the input-space
distance (:func:`lightning_stiffness.analytics.distance.preprocess_inputs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MIN_STD_FRACTION", "feature_statistics", "standardize_to_unit_sphere", "std_floor"]

#: Floor of a feature's standard deviation, as a fraction of the pooled standard deviation of all
#: input values. 0.16 reproduces a floor of 0.05 on MNIST's [0, 1] pixels (pooled std 0.3081).
MIN_STD_FRACTION = 0.16


def feature_statistics(examples: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean ``μ_d = 1/N Σ_n x_nd`` and population standard deviation
    ``σ_d = sqrt(1/N Σ_n (x_nd − μ_d)²)`` over the example axis 0, computed in float64.

    Args:
        examples: ``(N, ...)`` with ``N ≥ 1``.

    Returns:
        ``(mean, std)``, each of shape ``examples.shape[1:]``, float32 (float64 for float64 input).
    """
    if examples.dim() == 0 or examples.shape[0] == 0:
        raise ValueError(f"need examples of shape (N, ...) with N >= 1, got shape {tuple(examples.shape)}")
    dtype = torch.float64 if examples.dtype == torch.float64 else torch.float32
    values = examples.to(torch.float64)
    mean = values.mean(dim=0)
    std = (values - mean).square().mean(dim=0).sqrt()
    return mean.to(dtype), std.to(dtype)


def std_floor(mean: Tensor, std: Tensor, fraction: float = MIN_STD_FRACTION) -> Tensor:
    """``σ_min = fraction · σ_pool``, where ``σ_pool² = mean_d(σ_d²) + mean_d((μ_d − mean_d μ_d)²)``
    is the population variance of all ``N·D`` input values pooled (exact for per-feature
    population statistics over the same ``N`` examples). A 0-dim tensor."""
    mean64, std64 = mean.to(torch.float64), std.to(torch.float64)
    pooled = (std64.square().mean() + (mean64 - mean64.mean()).square().mean()).sqrt()
    return (fraction * pooled).to(std.dtype)


def standardize_to_unit_sphere(
    examples: Tensor, mean: Tensor | None = None, std: Tensor | None = None, *, fraction: float = MIN_STD_FRACTION
) -> Tensor:
    """``x̂_n = z_n / ‖z_n‖₂`` with ``z_nd = (x_nd − μ_d) / max(σ_d, σ_min)`` (see the module docstring).

    Args:
        examples: ``(N, ...)``; each example is normalised over all its features.
        mean, std: per-feature statistics of shape ``examples.shape[1:]`` (e.g. of the training
            split, from :func:`feature_statistics`); both ``None`` uses the statistics of ``examples``.
        fraction: ``σ_min / σ_pool`` (:data:`MIN_STD_FRACTION`).

    Returns:
        A float tensor shaped like ``examples`` (float32 for integer input), every example of
        L2 norm 1 or, if it equals the mean in every feature, all zeros.
    """
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither (then the statistics of `examples` are used)")
    if mean is None or std is None:
        mean, std = feature_statistics(examples)
    x = examples if examples.is_floating_point() else examples.float()
    if mean.shape != x.shape[1:] or std.shape != x.shape[1:]:
        raise ValueError(
            f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the shape of one example "
            f"{tuple(x.shape[1:])}"
        )
    floored = std.clamp_min(std_floor(mean, std, fraction))
    floored = torch.where(floored > 0, floored, torch.ones_like(floored))  # all features constant and equal
    z = (x - mean.to(x)) / floored.to(x)
    norms = z.reshape(z.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (z.dim() - 1)))
    return torch.where(norms > 0, z / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(z))
