"""The bootstrap over probe examples behind the critical length's confidence interval: resample
multiplicities, the pair weights ``count(a) · count(b)`` they induce, weighted least-squares lines of
every resample from five weighted sums, the range of distances each resample uses, and quantiles that
tolerate ``+inf`` (docs/concepts.md "Critical length ξ"). The per-resample estimators are in
:mod:`lightning_stiffness.analytics.critical_length`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lightning_stiffness.analytics.curves import PairSample
from lightning_stiffness.analytics.stiffness import accumulation_dtype

__all__: list[str] = []

#: Elements of the ``(resamples, pairs)`` weight matrix built at once.
_CHUNK_ELEMENTS = 2**22


def _quantiles(samples: Tensor, qs: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles (as :func:`torch.quantile`) of samples that may hold ``+inf``:
    a quantile that interpolates towards ``+inf`` is ``+inf`` (torch gives NaN)."""
    ordered = samples.to(torch.float64).sort().values.tolist()
    out = []
    for q in qs:
        position = q * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        a, b = ordered[low], ordered[high]
        weight = position - low
        out.append(a if weight == 0 or a == b else a + weight * (b - a))
    return out


def _resample_counts(n: int, bootstrap: int, seed: int) -> Tensor:
    """``(bootstrap, n)`` multiplicity of every example in each resample with replacement."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (bootstrap, n), generator=generator)
    return torch.zeros(bootstrap, n).scatter_add_(1, draws, torch.ones(bootstrap, n))


def _pair_chunks(pairs: PairSample, bootstrap: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Pair weights ``count(a) · count(b)`` of the resamples, as ``(P, chunk)`` blocks (pairs
    along the rows: one contiguous gather per endpoint), with the ``(N, chunk)`` counts.
    Kept in ``pairs.cache`` when they fit in one block."""
    key = ("weights", bootstrap, seed)
    if key in pairs.cache:
        yield from pairs.cache[key]
        return
    device = pairs.values.device
    multiplicity = _resample_counts(pairs.n, bootstrap, seed).to(device=device, dtype=accumulation_dtype(device))
    rows, cols = pairs.rows, pairs.cols
    chunk = max(1, _CHUNK_ELEMENTS // max(1, rows.shape[0]))
    for start in range(0, bootstrap, chunk):
        counts = multiplicity[start : start + chunk].T.contiguous()
        block = (counts[rows].mul_(counts[cols]), counts)
        if chunk >= bootstrap:
            pairs.cache[key] = [block]
        yield block


def _moment_lines(weights: Tensor, dists: Tensor, values: Tensor, spread_out: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted least-squares ``S = a + b·d`` for every column of ``weights`` ``(P, B)``, from
    five weighted sums (one matrix product) instead of a centred pass per resample.

    With ``d' = d − d₀`` and ``s' = s − s₀`` shifted by the unweighted means (translation does not
    change the slope, and keeps the moments free of cancellation), ``W = Σw``,
    ``b = (Σw d's' − Σw d' · Σw s' / W) / (Σw d'² − (Σw d')² / W)`` and
    ``a = s₀ + Σw s'/W − b (d₀ + Σw d'/W)``. NaN where fewer than two pairs carry weight, or where
    ``spread_out`` (the resample's used distances are not all equal) is False."""
    dtype = weights.dtype
    dists, values = dists.to(dtype), values.to(dtype)
    d0 = dists.mean() if dists.numel() else dists.new_zeros(())
    s0 = values.mean() if values.numel() else values.new_zeros(())
    d, s = dists - d0, values - s0
    moments = torch.stack([torch.ones_like(d), d, s, d * d, d * s]) @ weights  # (5, B)
    total, sum_d, sum_s, sum_dd, sum_ds = moments
    safe_total = total.clamp_min(1)
    spread = sum_dd - sum_d * sum_d / safe_total
    covariance = sum_ds - sum_d * sum_s / safe_total
    defined = (total >= 2) & (spread > 0) & spread_out
    slopes = torch.where(defined, covariance / torch.where(defined, spread, 1.0), math.nan)
    intercepts = torch.where(defined, s0 + sum_s / safe_total - slopes * (d0 + sum_d / safe_total), math.nan)
    return slopes, intercepts


def _used_range(drawn: Tensor, rows: Tensor, cols: Tensor, dists: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest and largest distance of the pairs with both examples drawn, per resample
    (``drawn``: bool ``(N, B)``); ``(+inf, −inf)`` for a resample with no such pair.

    Walks the pairs from the nearest (resp. farthest) in growing chunks and stops when every
    resample has found one: a pair is drawn with probability ≈ (1 − 1/e)², so a few pairs do."""
    dtype = torch.float64
    d_min = _first_used(drawn, rows, cols, dists, order, math.inf).to(dtype)
    d_max = _first_used(drawn, rows, cols, dists, order.flip(0), -math.inf).to(dtype)
    return d_min, d_max


def _first_used(drawn: Tensor, rows: Tensor, cols: Tensor, dists: Tensor, order: Tensor, missing: float) -> Tensor:
    """``dists`` of the first pair in ``order`` whose two examples are drawn, per column of ``drawn``."""
    found = torch.full((drawn.shape[1],), missing, dtype=dists.dtype, device=dists.device)
    pending = torch.ones(drawn.shape[1], dtype=torch.bool, device=drawn.device)
    start, chunk = 0, 64
    while start < order.shape[0] and bool(pending.any()):
        index = order[start : start + chunk]
        used = drawn[rows[index]] & drawn[cols[index]]  # (chunk, B)
        hit = used.any(dim=0) & pending
        first = used.to(torch.uint8).argmax(dim=0)  # the first True of each column
        found = torch.where(hit, dists[index][first], found)
        pending &= ~hit
        start, chunk = start + chunk, chunk * 4
    return found
