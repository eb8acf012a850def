"""Stiffness as a function of distance and the critical length ξ (Fort et al. 2019,
v1 Figs 9-10, v3 "dynamical critical length"; docs/concepts.md "Critical length ξ").

Two estimators of the distance at which stiffness decays to zero: (B) the first zero crossing
of the binned mean curve (v1 "stiff domain size", Fig. 9-10) and (A) the zero of a
least-squares line through the pairs (v3 "dynamical critical length"), with bootstrap
confidence intervals over probe examples (the resampling machinery is in ``bootstrap.py``; the
binned curves, :class:`BinnedCurve` and :func:`binned_curve`, in ``curves.py``, re-exported here).

An estimate is a number only when the data show the crossing (status ``measured``). A curve that
stays positive over the observed distances gives ``censored`` (ξ is larger than
``lower_bound``), a fitted line whose zero lies outside the observed distances gives
``extrapolated``; both keep ``value`` NaN so that no logger or table shows them as ξ.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lightning_stiffness.analytics.bootstrap import _moment_lines, _pair_chunks, _quantiles, _used_range

# the binned curves moved to analytics/curves.py; importable from here as before
from lightning_stiffness.analytics.curves import BinnedCurve, binned_curve, curve_of_pairs
from lightning_stiffness.analytics.curves import DistanceBins as DistanceBins
from lightning_stiffness.analytics.curves import PairSample as PairSample
from lightning_stiffness.analytics.stiffness import accumulation_dtype, as_float, pair_mask, square_matrix

__all__ = [
    "BinnedCurve",
    "CriticalLength",
    "binned_curve",
    "critical_length",
    "linear_fit_length",
    "zero_crossing_length",
]

#: The two critical-length estimators: v1's first zero crossing of the binned curve, v3's linear fit.
ESTIMATORS = ("zero_crossing", "linear_fit")

#: ``CriticalLength.status`` values.
MEASURED = "measured"
CENSORED = "censored"
EXTRAPOLATED = "extrapolated"
UNDEFINED = "undefined"
STATUSES = (MEASURED, CENSORED, EXTRAPOLATED, UNDEFINED)


@dataclass(frozen=True)
class CriticalLength:
    """A critical-length estimate and how it was obtained.

    Attributes:
        value: ξ, a distance; finite only when ``status`` is ``measured`` (NaN otherwise).
        crossed: ``status == "measured"``.
        method: ``"zero_crossing"`` (estimator B, v1) or ``"linear_fit"`` (estimator A, v3).
        ci_low, ci_high: bootstrap confidence interval (NaN when no bootstrap ran or ``value``
            is NaN). Resamples without a crossing inside their data count as ``+inf`` (ξ beyond the
            data), so ``ci_high`` may be ``inf``.
        window: the distance range the estimate used (binning range, or fit window), None without data.
        slope, intercept: the fitted line ``S = intercept + slope · d`` (NaN for the zero crossing).
        status: ``measured`` (the data cross zero: ``value`` is ξ), ``censored`` (stiffness stays
            above zero over the observed distances: ξ > ``lower_bound``), ``extrapolated`` (the
            fitted line's zero, ``extrapolation``, lies outside the observed distances) or
            ``undefined`` (no data, a single distance, or stiffness never above zero / a line that
            does not decay).
        lower_bound: for ``censored``, and ``extrapolated`` beyond the data, the distance the
            estimate exceeds: the centre of the last non-empty bin (zero crossing) or the largest
            fitted distance (linear fit); NaN otherwise.
        extrapolation: the linear fit's zero ``−a/b`` when ``extrapolated`` (NaN otherwise): a
            property of the line, not a measured distance.
    """

    value: float
    crossed: bool
    method: str
    ci_low: float
    ci_high: float
    window: tuple[float, float] | None
    slope: float
    intercept: float
    status: str = ""
    lower_bound: float = math.nan
    extrapolation: float = math.nan

    def __post_init__(self) -> None:
        status = self.status or (
            MEASURED if self.crossed else (CENSORED if math.isfinite(self.lower_bound) else UNDEFINED)
        )
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.crossed != (status == MEASURED):
            raise ValueError(f"crossed={self.crossed} contradicts status {status!r}")
        if status != MEASURED and not math.isnan(self.value):
            raise ValueError(
                f"a {status} critical length has value NaN (got {self.value}); put the bound in lower_bound "
                "or the line's zero in extrapolation"
            )
        object.__setattr__(self, "status", status)

    @property
    def bound_or_value(self) -> float:
        """``value`` when measured, else ``lower_bound`` (for a figure that marks it "≥")."""
        return self.value if self.status == MEASURED else self.lower_bound


def zero_crossing_length(curve: BinnedCurve) -> CriticalLength:
    """Estimator (B), v1's "stiff domain size": the first zero-stiffness crossing of the binned
    mean curve, walking from distance 0 upward (docs/concepts.md "Zero crossing (v1)").

    Over the non-empty bins: the first place the mean goes from ``> 0`` to ``≤ 0``, linearly
    interpolated between the two bin centres (``measured``). If the first non-empty bin is
    already ``≤ 0`` the value is its centre (``measured``: stiffness is 1 at distance 0). Without
    a crossing the estimate is ``censored``: value NaN, ``lower_bound`` the centre of the last
    non-empty bin (the interpolated crossing would lie beyond it). Without data: ``undefined``.
    """
    edges = curve.edges.detach().cpu().tolist()
    value, status, bound = _first_zero_crossing(
        curve.centers.detach().cpu().tolist(), curve.mean.detach().cpu().tolist(), curve.count > 0
    )
    window = (float(edges[0]), float(edges[-1]))
    return CriticalLength(
        value, status == MEASURED, "zero_crossing", math.nan, math.nan, window, math.nan, math.nan, status, bound
    )


def linear_fit_length(
    stiffness: Tensor, distances: Tensor, mask: Tensor, *, max_distance: float | None = None
) -> CriticalLength:
    """Estimator (A), v3's "dynamical critical length": the zero of the least-squares line
    ``S = a + b·d`` through the selected pairs (upper triangle ``i < j``), ``ξ = −a/b``
    (docs/concepts.md "Linear fit (v3)").

    The status follows where the line's zero lies relative to the fitted distances
    ``[d_min, d_max]``: ``measured`` inside (value ξ); ``extrapolated`` outside (value NaN, the
    zero in ``extrapolation``, and ``lower_bound = d_max`` when it lies beyond); ``censored`` when
    the line does not decay (``b ≥ 0``) but is positive at ``d_max`` (``lower_bound = d_max``);
    ``undefined`` when the line is never positive at ``d ≥ 0``, or with fewer than two pairs or
    a single distinct distance (NaN slope and intercept).

    Args:
        max_distance: fit only pairs with ``d ≤ max_distance``; the window is ``(0, max_distance)``,
            by default ``(0, max d)``.
    """
    return _linear_fit_of_pairs(PairSample.from_matrices(stiffness, distances, mask), max_distance)


def _linear_fit_of_pairs(pairs: PairSample, max_distance: float | None) -> CriticalLength:
    """:func:`linear_fit_length` of pairs already selected."""
    values, dists = pairs.values, pairs.dists
    if max_distance is not None:
        keep = dists <= max_distance
        values, dists = values[keep], dists[keep]
    high = float(max_distance) if max_distance is not None else (float(dists.max()) if dists.numel() else None)
    window = (0.0, high) if high is not None else None
    weights = torch.ones(1, values.shape[0], dtype=accumulation_dtype(values.device), device=values.device)
    slope, intercept = (float(t) for t in _weighted_lines(weights, dists, values))
    observed = (float(dists.min()), float(dists.max())) if dists.numel() else (math.nan, math.nan)
    value, status, bound, zero = _line_zero(slope, intercept, *observed)
    return CriticalLength(
        value, status == MEASURED, "linear_fit", math.nan, math.nan, window, slope, intercept, status, bound, zero
    )


def critical_length(
    stiffness: Tensor,
    distances: Tensor,
    labels: Tensor,
    *,
    method: str = "zero_crossing",
    pairs: str = "within",
    bins: int = 30,
    max_distance: float | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.9,
) -> CriticalLength:
    """Critical length ξ over the pairs of one kind (v3: within-class), with an optional
    bootstrap confidence interval (docs/concepts.md "Bootstrap confidence intervals").

    Args:
        stiffness, distances: ``(N, N)`` symmetric pairwise matrices.
        labels: ``(N,)`` class labels.
        method: ``"zero_crossing"`` (:func:`zero_crossing_length` of :func:`binned_curve`) or
            ``"linear_fit"`` (:func:`linear_fit_length`).
        pairs: ``"within"``, ``"between"`` or ``"all"`` (:func:`pair_mask`, ``i ≠ j``).
        bins: bins of the zero-crossing curve.
        max_distance: the fit window of the linear fit, and the upper end of the binning range.
        bootstrap: number of resamples of the probe *examples* with replacement, drawn as
            ``torch.randint(0, N, (bootstrap, N), generator=torch.Generator().manual_seed(seed))``.
            Each is the estimate on the resampled matrices ``M[index][:, index]`` without pairs of
            two copies of one example, computed exactly and without materialising them: an original
            pair ``a < b`` enters with multiplicity ``count(a) · count(b)``. The zero-crossing
            resamples use the binning range of the point estimate.
        seed: seed of the generator.
        confidence: coverage of the interval ``[q_{(1−c)/2}, q_{(1+c)/2}]`` of the bootstrap values:
            a resample's ξ when measured, ``+inf`` when its ξ lies beyond its data (censored, or
            extrapolated past the largest distance), dropped otherwise. NaN when the point estimate
            is not measured or every resample was dropped.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; expected one of {ESTIMATORS}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    stiffness = as_float(square_matrix(stiffness, "stiffness"))
    distances = as_float(square_matrix(distances, "distances")).to(stiffness.device)
    mask = pair_mask(labels, pairs).to(stiffness.device)
    if mask.shape != stiffness.shape or distances.shape != stiffness.shape:
        raise ValueError(
            f"stiffness {tuple(stiffness.shape)}, distances {tuple(distances.shape)} and labels "
            f"{tuple(labels.shape)} must describe the same N examples"
        )
    sample = PairSample.from_matrices(stiffness, distances, mask)
    return critical_length_of_pairs(
        sample,
        method=method,
        bins=bins,
        max_distance=max_distance,
        bootstrap=bootstrap,
        seed=seed,
        confidence=confidence,
    )


def critical_length_of_pairs(
    pairs: PairSample,
    *,
    method: str = "zero_crossing",
    bins: int = 30,
    max_distance: float | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.9,
) -> CriticalLength:
    """:func:`critical_length` of pairs already selected (arguments as there; the bootstrap
    resamples the ``pairs.n`` examples)."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; expected one of {ESTIMATORS}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if method == "linear_fit":
        estimate = _linear_fit_of_pairs(pairs, max_distance)
    else:
        value_range = (0.0, float(max_distance)) if max_distance is not None else None
        estimate = zero_crossing_length(curve_of_pairs(pairs, bins=bins, value_range=value_range))
    if bootstrap == 0 or estimate.window is None:
        return estimate
    if method == "linear_fit":
        samples = _bootstrap_linear_fit(pairs, bootstrap, seed, max_distance)
    else:
        samples = _bootstrap_zero_crossing(pairs, bootstrap, seed, bins, estimate.window)
    known = samples[~torch.isnan(samples)]
    if known.numel() == 0 or estimate.status != MEASURED:
        return estimate
    low, high = _quantiles(known, ((1 - confidence) / 2, (1 + confidence) / 2))
    return replace(estimate, ci_low=low, ci_high=high)


def _bootstrap_linear_fit(pairs: PairSample, bootstrap: int, seed: int, max_distance: float | None) -> Tensor:
    """ξ of the weighted line of every resample (see :func:`_moment_lines` and :func:`_used_range`)."""
    rows, cols, values, dists = pairs.rows, pairs.cols, pairs.values, pairs.dists
    keep = None
    if max_distance is not None and not bool((dists <= max_distance).all()):
        keep = (dists <= max_distance).nonzero().squeeze(1)
        rows, cols, values, dists = rows[keep], cols[keep], values[keep], dists[keep]
    samples = []
    for number, (weights, counts) in enumerate(_pair_chunks(pairs, bootstrap, seed)):
        key = ("range", bootstrap, seed, max_distance, number)  # the same for every kind of stiffness
        if key not in pairs.cache:
            pairs.cache[key] = _used_range(counts > 0, rows, cols, dists, torch.argsort(dists, stable=True))
        d_min, d_max = pairs.cache[key]
        slopes, intercepts = _moment_lines(weights if keep is None else weights[keep], dists, values, d_min < d_max)
        for b, a, low, high in zip(slopes.tolist(), intercepts.tolist(), d_min.tolist(), d_max.tolist()):
            samples.append(_sample_value(*_line_zero(b, a, low, high)[:3]))
    return torch.tensor(samples, dtype=torch.float64)


def _sample_value(value: float, status: str, bound: float) -> float:
    """A bootstrap resample's ξ: its value when measured, ``+inf`` when ξ lies beyond its data
    (a finite lower bound), NaN (dropped) otherwise."""
    if status == MEASURED:
        return value
    return math.inf if math.isfinite(bound) else math.nan


def _bootstrap_zero_crossing(
    pairs: PairSample, bootstrap: int, seed: int, bins: int, value_range: tuple[float, float]
) -> Tensor:
    """ξ of the binned mean curve of every resample, on the bins of ``value_range``."""
    values, dists = pairs.values, pairs.dists
    low, high = value_range
    edges = torch.linspace(low, high, bins + 1, dtype=dists.dtype, device=dists.device)
    inside = (dists >= low) & (dists <= high)
    keep = None if bool(inside.all()) else inside.nonzero().squeeze(1)
    if keep is not None:
        values, dists = values[keep], dists[keep]
    index = torch.bucketize(dists, edges[1:-1], right=True)
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    samples = []
    for number, (weights, _) in enumerate(_pair_chunks(pairs, bootstrap, seed)):
        if keep is not None:
            weights = weights[keep]
        totals = torch.zeros(bins, weights.shape[1], dtype=weights.dtype, device=weights.device)
        key = ("bin counts", bootstrap, seed, bins, value_range, number)  # the same for every kind of stiffness
        if key not in pairs.cache:
            pairs.cache[key] = totals.index_add(0, index, weights)
        counts = pairs.cache[key]
        sums = totals.index_add(0, index, weights * values.to(weights.dtype)[:, None])
        means = (sums / counts.clamp_min(1)).T.tolist()
        for row_means, row_nonempty in zip(means, (counts > 0).T.tolist()):
            samples.append(_sample_value(*_first_zero_crossing(centers, row_means, row_nonempty)))
    return torch.tensor(samples, dtype=torch.float64)


def _first_zero_crossing(
    centers: Sequence[float], means: Sequence[float], nonempty: Sequence[bool] | Tensor
) -> tuple[float, str, float]:
    """``(value, status, lower_bound)`` of estimator (B) over the bins flagged ``nonempty``."""
    flags = nonempty.tolist() if isinstance(nonempty, Tensor) else nonempty
    points = [(c, m) for c, m, f in zip(centers, means, flags) if f and math.isfinite(m)]
    if not points:
        return math.nan, UNDEFINED, math.nan
    if points[0][1] <= 0:
        return float(points[0][0]), MEASURED, math.nan
    for (center_prev, mean_prev), (center, mean) in itertools.pairwise(points):
        if mean <= 0:
            return center_prev + mean_prev / (mean_prev - mean) * (center - center_prev), MEASURED, math.nan
    return math.nan, CENSORED, float(points[-1][0])


def _weighted_lines(weights: Tensor, dists: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted least-squares ``S = a + b·d``, one line per row of ``weights`` ``(B, P)``:
    ``(slopes, intercepts)``, NaN where fewer than two pairs or one distinct distance carry weight."""
    dists, values = dists.to(weights.dtype), values.to(weights.dtype)
    total = weights.sum(dim=1)
    safe_total = total.clamp_min(1)
    d_mean = (weights @ dists) / safe_total
    s_mean = (weights @ values) / safe_total
    d_centred = dists[None, :] - d_mean[:, None]
    spread = (weights * d_centred**2).sum(dim=1)
    covariance = (weights * d_centred * (values[None, :] - s_mean[:, None])).sum(dim=1)
    defined = (total >= 2) & (spread > 0)
    slopes = torch.where(defined, covariance / torch.where(defined, spread, 1.0), math.nan)
    intercepts = torch.where(defined, s_mean - slopes * d_mean, math.nan)
    return slopes, intercepts


def _line_zero(slope: float, intercept: float, d_min: float, d_max: float) -> tuple[float, str, float, float]:
    """``(value, status, lower_bound, extrapolation)`` of the line ``S = intercept + slope·d``
    fitted to distances in ``[d_min, d_max]`` (see :func:`linear_fit_length`)."""
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        return math.nan, UNDEFINED, math.nan, math.nan
    if slope >= 0:
        if intercept + slope * d_max > 0:
            return math.nan, CENSORED, d_max, math.nan
        return math.nan, UNDEFINED, math.nan, math.nan
    zero = -intercept / slope
    if zero < 0:
        return math.nan, UNDEFINED, math.nan, math.nan  # the line is below zero at every d ≥ 0
    if zero > d_max:
        return math.nan, EXTRAPOLATED, d_max, zero
    if zero < d_min:
        return math.nan, EXTRAPOLATED, math.nan, zero
    return zero, MEASURED, math.nan, math.nan
