"""Super-class structure of a fine-class stiffness matrix (CIFAR-100 coarse labels,
Fort et al. 2019 v1 CIFAR-100 class stiffness matrix; docs/concepts.md "Super-class structure").

Reorders ``C`` so fine classes of one super-class are adjacent (block borders for the heatmap)
and tests whether stiffness between fine classes of the same super-class exceeds that between
fine classes of different super-classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_stiffness.analytics.stiffness import accumulation_dtype, square_matrix

__all__ = ["SuperclassStats", "reorder_by_superclass", "superclass_stats"]

#: Elements of the ``(permutations, C, C)`` masks built at once.
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class SuperclassStats:
    """Mean class stiffness between fine classes of the same vs different super-classes.

    Attributes:
        same: mean ``C(c_a, c_b)`` over fine classes ``a ≠ b`` in the same super-class.
        different: mean over fine classes in different super-classes.
        difference: ``same − different``.
        p_value: one-sided permutation-test p-value of ``difference`` (NaN if it is undefined).
        permutations: number of permutations drawn.
    """

    same: float
    different: float
    difference: float
    p_value: float
    permutations: int


def reorder_by_superclass(
    class_matrix: Tensor, coarse_of_fine: Sequence[int] | Tensor
) -> tuple[Tensor, Tensor, list[int]]:
    """Order the fine classes by super-class (stably) for a block-structured heatmap of the class
    stiffness matrix (v1 Eq. 6 on CIFAR-100).

    Args:
        class_matrix: ``(C, C)`` class stiffness matrix.
        coarse_of_fine: super-class of each fine class, length ``C``.

    Returns:
        ``(reordered, order, boundaries)``: ``reordered = class_matrix[order][:, order]``; ``order``
        the fine classes sorted by super-class, ties in fine-class order; ``boundaries`` the
        positions in ``order`` where a new super-class starts, 0 excluded.
    """
    class_matrix = square_matrix(class_matrix, "class_matrix")
    coarse = _coarse_labels(coarse_of_fine, class_matrix)
    sorted_coarse, order = torch.sort(coarse, stable=True)
    boundaries = (torch.nonzero(sorted_coarse[1:] != sorted_coarse[:-1]).flatten() + 1).tolist()
    return class_matrix[order][:, order], order, boundaries


def superclass_stats(
    class_matrix: Tensor, coarse_of_fine: Sequence[int] | Tensor, *, permutations: int = 1000, seed: int = 0
) -> SuperclassStats:
    """Same- vs different-super-class stiffness with a permutation test (docs/concepts.md "Super-class structure").

    ``same`` and ``different`` average ``C(c_a, c_b)`` (v1 Eq. 6) over fine-class pairs ``a ≠ b``
    whose super-classes agree / differ, ignoring NaN entries. The p-value permutes the super-class
    assignment of the fine classes (group sizes kept): ``(1 + #{difference_perm ≥ difference}) /
    (1 + permutations)``.

    Args:
        class_matrix: ``(C, C)`` class stiffness matrix.
        coarse_of_fine: super-class of each fine class, length ``C``.
        permutations: number of random permutations.
        seed: seed of the ``torch.Generator`` drawing them.
    """
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    class_matrix = square_matrix(class_matrix, "class_matrix")
    coarse = _coarse_labels(coarse_of_fine, class_matrix)
    num_fine = class_matrix.shape[0]
    dtype = accumulation_dtype(class_matrix.device)
    off_diagonal = ~torch.eye(num_fine, dtype=torch.bool, device=class_matrix.device)
    valid = off_diagonal & torch.isfinite(class_matrix)
    values = torch.where(valid, class_matrix, torch.zeros_like(class_matrix)).to(dtype)
    weights = valid.to(dtype)

    observed_same, observed_different = _same_different_means(coarse[None], values, weights)
    same, different = float(observed_same[0]), float(observed_different[0])
    difference = same - different
    if not math.isfinite(difference):
        return SuperclassStats(same, different, difference, math.nan, permutations)

    generator = torch.Generator().manual_seed(seed)
    shuffles = torch.rand(permutations, num_fine, generator=generator).argsort(dim=1).to(class_matrix.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_fine * num_fine))
    exceed = 0
    tolerance = 1e-12 * max(1.0, abs(difference))
    for start in range(0, permutations, chunk):
        permuted = coarse[shuffles[start : start + chunk]]
        perm_same, perm_different = _same_different_means(permuted, values, weights)
        exceed += int(((perm_same - perm_different) >= difference - tolerance).sum())
    p_value = (1 + exceed) / (1 + permutations)
    return SuperclassStats(same, different, difference, p_value, permutations)


def _same_different_means(assignments: Tensor, values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """For each row of ``assignments`` ``(B, C)``: mean of ``values`` over weighted pairs whose
    super-classes agree, and over those whose super-classes differ."""
    same = (assignments[:, :, None] == assignments[:, None, :]).to(values.dtype)
    same_sum = (same * values).sum(dim=(1, 2))
    same_count = (same * weights).sum(dim=(1, 2))
    different_sum = values.sum() - same_sum
    different_count = weights.sum() - same_count
    nan = torch.full_like(same_sum, math.nan)
    same_mean = torch.where(same_count > 0, same_sum / same_count.clamp_min(1), nan)
    different_mean = torch.where(different_count > 0, different_sum / different_count.clamp_min(1), nan)
    return same_mean, different_mean


def _coarse_labels(coarse_of_fine: Sequence[int] | Tensor, class_matrix: Tensor) -> Tensor:
    coarse = torch.as_tensor(coarse_of_fine, device=class_matrix.device)
    if coarse.dim() != 1 or coarse.shape[0] != class_matrix.shape[0]:
        raise ValueError(
            f"coarse_of_fine must give one super-class per fine class ({class_matrix.shape[0]}), "
            f"got shape {tuple(coarse.shape)}"
        )
    if coarse.is_floating_point() or coarse.is_complex():
        raise ValueError(f"coarse_of_fine must hold integer super-class ids, got dtype {coarse.dtype}")
    return coarse.long()
