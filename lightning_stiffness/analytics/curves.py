"""Stiffness as a function of distance: the pairs a curve runs over (:class:`PairSample`), equal-width
distance bins (:class:`DistanceBins`) and the binned mean ± standard error curve (:class:`BinnedCurve`,
Fort et al. 2019, v1 Fig. 9; docs/concepts.md "Critical length ξ"). The critical length read off these
curves is in :mod:`lightning_stiffness.analytics.critical_length`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_stiffness.analytics.stiffness import accumulation_dtype, as_float, square_matrix

__all__ = [
    "BinnedCurve",
    "DistanceBins",
    "PairSample",
    "binned_curve",
    "curve_of_pairs",
]


@dataclass(frozen=True)
class BinnedCurve:
    """Mean ± standard error of stiffness in equal-width distance bins.

    Attributes:
        edges: ``(bins + 1,)`` bin edges; bin ``k`` is ``[edges[k], edges[k+1])``, the last one closed.
        centers: ``(bins,)`` bin centres.
        mean: ``(bins,)`` mean stiffness per bin, NaN in empty bins.
        sem: ``(bins,)`` standard error of the mean (sample std / sqrt(count)), NaN with fewer than 2 pairs.
        count: ``(bins,)`` number of pairs per bin (long).
    """

    edges: Tensor
    centers: Tensor
    mean: Tensor
    sem: Tensor
    count: Tensor


@dataclass(frozen=True)
class PairSample:
    """The pairs ``i < j`` of ``n`` examples that a curve or a critical length runs over, in
    row-major order, with their stiffness and distance (both finite).

    ``cache`` keeps the bootstrap's pair weights (they depend on ``n``, ``rows``, ``cols``, the
    number of resamples and the seed, not on the stiffness): :func:`dataclasses.replace` with new
    ``values`` shares it, so both estimators and both kinds of stiffness build them once.
    """

    n: int
    rows: Tensor
    cols: Tensor
    values: Tensor
    dists: Tensor
    cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_matrices(cls, stiffness: Tensor, distances: Tensor, mask: Tensor) -> PairSample:
        """The pairs ``i < j`` selected by ``mask`` whose stiffness and distance are finite."""
        rows, cols = _pair_indices(stiffness, distances, mask)
        stiffness = as_float(stiffness)
        return cls(
            stiffness.shape[0], rows, cols, stiffness[rows, cols], as_float(distances).to(stiffness.device)[rows, cols]
        )

    def take(self, index: Tensor) -> PairSample:
        """The pairs at positions ``index`` (a long vector; order as given)."""
        return PairSample(self.n, self.rows[index], self.cols[index], self.values[index], self.dists[index])


def binned_curve(
    stiffness: Tensor,
    distances: Tensor,
    mask: Tensor,
    *,
    bins: int = 30,
    value_range: tuple[float, float] | None = None,
) -> BinnedCurve:
    """Binned mean ± standard error of stiffness against distance (v1 Fig. 9: ≈30 equal-width
    bins, one curve per layer and pair type).

    Only the upper triangle ``i < j`` of ``mask`` is used (the matrices are symmetric), and only
    pairs whose stiffness and distance are finite.

    Args:
        stiffness: ``(N, N)`` pairwise stiffness.
        distances: ``(N, N)`` pairwise distances.
        mask: bool ``(N, N)`` selecting pairs, e.g. :func:`pair_mask`.
        bins: number of equal-width bins.
        value_range: ``(low, high)`` of the bins; default ``(0, max distance of the selected pairs)``
            (``(0, 1)`` when there is none or it is 0). Pairs outside the range are dropped.
    """
    return curve_of_pairs(PairSample.from_matrices(stiffness, distances, mask), bins=bins, value_range=value_range)


def curve_of_pairs(pairs: PairSample, *, bins: int = 30, value_range: tuple[float, float] | None = None) -> BinnedCurve:
    """:func:`binned_curve` of pairs already selected (arguments as there)."""
    binning = DistanceBins.of(pairs.dists, bins=bins, value_range=value_range)
    return binning.curve(pairs.values)


@dataclass(frozen=True)
class DistanceBins:
    """Equal-width distance bins with the bin of every pair computed once, so that several
    curves over subsets of the same pairs (kinds of stiffness, within/between/all) share it.

    Attributes:
        edges: ``(bins + 1,)`` edges; bin ``k`` is ``[edges[k], edges[k+1])``, the last one closed.
        index: ``(P,)`` bin of each pair (meaningful where ``inside``).
        inside: ``(P,)`` pairs whose distance lies in ``[edges[0], edges[-1]]``.
        groups: ``(P,)`` bin of a same-class pair, ``bins +`` bin of a different-class pair (None
            unless ``same`` was given to :meth:`of`); for :meth:`curves_by_class`.
    """

    edges: Tensor
    index: Tensor
    inside: Tensor
    groups: Tensor | None = None

    @classmethod
    def of(
        cls,
        dists: Tensor,
        *,
        bins: int = 30,
        value_range: tuple[float, float] | None = None,
        same: Tensor | None = None,
    ) -> DistanceBins:
        """Bins of ``value_range`` (default ``(0, max dists)``, ``(0, 1)`` when that is 0 or there
        are none); ``same`` flags the same-class pairs for :meth:`curves_by_class`."""
        if bins < 1:
            raise ValueError(f"bins must be at least 1, got {bins}")
        if value_range is None:
            high = float(dists.max()) if dists.numel() else 0.0
            low, high = 0.0, high if high > 0 else 1.0
        else:
            low, high = float(value_range[0]), float(value_range[1])
            if not high > low:
                raise ValueError(f"value_range must satisfy low < high, got {value_range}")
        edges = torch.linspace(low, high, bins + 1, dtype=dists.dtype, device=dists.device)
        inside = (dists >= low) & (dists <= high)
        index = torch.bucketize(dists, edges[1:-1], right=True)
        groups = None if same is None else index + bins * ~same
        return cls(edges, index, inside, groups)

    def curve(self, values: Tensor, keep: Tensor | None = None) -> BinnedCurve:
        """Mean ± standard error per bin of ``values`` ``(P,)`` over the pairs flagged by ``keep``
        (default: all) that lie inside the bins."""
        count, sums, squares = self._moments(values, keep, self.index, self.edges.shape[0] - 1)
        return self._curve(count, sums, squares, values.dtype)

    def curves_by_class(self, values: Tensor, keep: Tensor | None = None) -> dict[str, BinnedCurve]:
        """``{"within": …, "between": …, "all": …}`` curves in one pass over the pairs (``same``
        given to :meth:`of`). The ``all`` curve combines the two groups exactly: counts and sums
        add, and the squared deviations add with Chan's term ``n_g (m_g − m)²`` per group."""
        if self.groups is None:
            raise ValueError("curves_by_class needs DistanceBins.of(..., same=...)")
        bins = self.edges.shape[0] - 1
        count, sums, squares = self._moments(values, keep, self.groups, 2 * bins)
        within, between = slice(0, bins), slice(bins, 2 * bins)
        total_count = count[within] + count[between]
        total_sums = sums[within] + sums[between]
        mean = total_sums / total_count.clamp_min(1)
        total_squares = squares[within] + squares[between]
        for group in (within, between):
            group_mean = sums[group] / count[group].clamp_min(1)
            total_squares = total_squares + count[group] * (group_mean - mean) ** 2
        dtype = values.dtype
        return {
            "within": self._curve(count[within], sums[within], squares[within], dtype),
            "between": self._curve(count[between], sums[between], squares[between], dtype),
            "all": self._curve(total_count, total_sums, total_squares, dtype),
        }

    def _moments(
        self, values: Tensor, keep: Tensor | None, index: Tensor, groups: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per group of ``index``: the count, the sum and the sum of squared deviations from the
        group mean (two passes, float64) of the pairs inside the bins flagged by ``keep``."""
        selected = self.inside if keep is None else self.inside & keep
        if not bool(selected.all()):
            rows = selected.nonzero().squeeze(1)
            index, values = index[rows], values[rows]
        dtype = accumulation_dtype(values.device)
        values = values.to(dtype)
        count_f = torch.bincount(index, minlength=groups).to(dtype)
        sums = torch.bincount(index, weights=values, minlength=groups).to(dtype)
        mean = torch.where(count_f > 0, sums / count_f.clamp_min(1), math.nan)
        squares = torch.bincount(index, weights=(values - mean[index]) ** 2, minlength=groups).to(dtype)
        return count_f, sums, squares

    def _curve(self, count_f: Tensor, sums: Tensor, squares: Tensor, values_dtype: torch.dtype) -> BinnedCurve:
        out_dtype = torch.promote_types(values_dtype, self.edges.dtype)
        count = count_f.round().long()
        mean = torch.where(count > 0, sums / count_f.clamp_min(1), math.nan)
        sem = torch.where(count > 1, (squares / (count_f - 1).clamp_min(1) / count_f.clamp_min(1)).sqrt(), math.nan)
        edges = self.edges
        return BinnedCurve(
            edges=edges,
            centers=(edges[:-1] + edges[1:]) / 2,
            mean=mean.to(out_dtype),
            sem=sem.to(out_dtype),
            count=count,
        )


def _pair_indices(stiffness: Tensor, distances: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` of the pairs ``i < j`` selected by ``mask`` whose stiffness and distance are finite."""
    stiffness = as_float(square_matrix(stiffness, "stiffness"))
    distances = as_float(square_matrix(distances, "distances")).to(stiffness.device)
    mask = square_matrix(mask, "mask").to(device=stiffness.device, dtype=torch.bool)
    if distances.shape != stiffness.shape or mask.shape != stiffness.shape:
        raise ValueError(
            f"stiffness {tuple(stiffness.shape)}, distances {tuple(distances.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    upper = torch.ones_like(mask).triu(diagonal=1)
    selected = mask & upper & torch.isfinite(stiffness) & torch.isfinite(distances)
    rows, cols = selected.nonzero(as_tuple=True)
    return rows, cols
