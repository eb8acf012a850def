"""The fast paths of the analytics (one pass over grouped pair sums, pairs gathered once per
distance space, bootstrap lines from weighted moments) against straightforward references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lightning_stiffness.analytics import (
    AnalysisConfig,
    analyze,
    binned_curve,
    critical_length,
    input_distances,
    pair_mask,
    split_block_summaries,
    stiffness_statistics,
)
from lightning_stiffness.analytics.bootstrap import _resample_counts
from lightning_stiffness.analytics.critical_length import (
    DistanceBins,
    PairSample,
    _bootstrap_linear_fit,
    _line_zero,
    _sample_value,
)
from lightning_stiffness.analytics.stiffness import PAIR_KINDS

nan = math.nan


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (tests/conftest.py)


def random_problem(n: int, seed: int, num_classes: int = 4) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A symmetric stiffness matrix with a few NaN entries, distances, labels and 3-way splits."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, n, generator=generator, dtype=torch.float64) * 2 - 1
    s = (raw + raw.T) / 2
    s[1, 4] = s[4, 1] = nan
    points = torch.randn(n, 6, generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    splits = torch.randint(0, 2, (n,), generator=generator) * 2  # split names 0 and 2 present, 1 absent
    return s, input_distances(points), labels, splits


def mean_over(s: Tensor, pairs: list[tuple[int, int]]) -> float:
    values = [float(s[i, j]) for i, j in pairs if math.isfinite(float(s[i, j]))]
    return sum(values) / len(values) if values else nan


def summary_reference(s: Tensor, labels: Tensor, pairs: list[tuple[int, int]], num_classes: int) -> tuple[float, ...]:
    """within = mean of diag C, between = mean of off-diagonal C (Eq. 7), all = mean over pairs."""
    matrix = [
        [mean_over(s, [(i, j) for i, j in pairs if labels[i] == a and labels[j] == b]) for b in range(num_classes)]
        for a in range(num_classes)
    ]
    diagonal = [matrix[a][a] for a in range(num_classes) if not math.isnan(matrix[a][a])]
    off = [matrix[a][b] for a in range(num_classes) for b in range(num_classes) if a != b]
    off = [v for v in off if not math.isnan(v)]
    within = sum(diagonal) / len(diagonal) if diagonal else nan
    between = sum(off) / len(off) if off else nan
    return within, between, mean_over(s, pairs)


@pytest.mark.parametrize("include_self", [False, True])
def test_grouped_pair_sums_match_loops(include_self: bool) -> None:
    s, _, labels, splits = random_problem(23, 0)
    names = ("train", "test", "val")
    n = len(labels)
    matrix, summaries = stiffness_statistics(s, labels, splits, names, 5, include_self=include_self)
    everything = [(i, j) for i in range(n) for j in range(n) if include_self or i != j]
    expected_matrix = torch.tensor(
        [
            [mean_over(s, [(i, j) for i, j in everything if labels[i] == a and labels[j] == b]) for b in range(5)]
            for a in range(5)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(matrix, expected_matrix, equal_nan=True, rtol=0, atol=1e-12)
    assert sorted(summaries) == ["all", "train-train", "train-val", "val-val"]
    for key, (a, b) in {"all": (None, None), "train-train": (0, 0), "train-val": (0, 2), "val-val": (2, 2)}.items():
        pairs = (
            everything if a is None else [(i, j) for i, j in everything if {int(splits[i]), int(splits[j])} == {a, b}]
        )
        got = summaries[key]
        for value, want in zip((got.within, got.between, got.all), summary_reference(s, labels, pairs, 5)):
            assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want, abs=1e-12)
    blocks = split_block_summaries(s, labels, splits, names, 5, include_self=include_self)
    assert blocks == {k: v for k, v in summaries.items() if k != "all"}


def test_curves_by_class_equal_separate_curves() -> None:
    s, d, labels, _ = random_problem(30, 1)
    n = len(labels)
    rows, cols = torch.triu_indices(n, n, offset=1)
    values, dists = s[rows, cols], d[rows, cols]
    usable = torch.isfinite(values) & torch.isfinite(dists)
    binning = DistanceBins.of(dists, bins=7, value_range=(0.2, 1.6), same=labels[rows] == labels[cols])
    curves = binning.curves_by_class(values, usable)
    for kind in PAIR_KINDS:
        expected = binned_curve(s, d, pair_mask(labels, kind), bins=7, value_range=(0.2, 1.6))
        assert torch.equal(curves[kind].count, expected.count)
        torch.testing.assert_close(curves[kind].edges, expected.edges, rtol=0, atol=0)
        torch.testing.assert_close(curves[kind].mean, expected.mean, equal_nan=True, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(curves[kind].sem, expected.sem, equal_nan=True, rtol=1e-10, atol=1e-13)


def centred_bootstrap_lines(pairs: PairSample, bootstrap: int, seed: int, max_distance: float | None) -> list[float]:
    """The textbook algorithm: explicit weights per resample, centred least squares, the used
    distances' min and max by masking."""
    counts = _resample_counts(pairs.n, bootstrap, seed).double()
    keep = pairs.dists <= max_distance if max_distance is not None else torch.ones_like(pairs.dists, dtype=torch.bool)
    d, s = pairs.dists[keep].double(), pairs.values[keep].double()
    rows, cols = pairs.rows[keep], pairs.cols[keep]
    out = []
    for c in counts:
        w = c[rows] * c[cols]
        total = float(w.sum())
        used = w > 0
        low = float(d[used].min()) if used.any() else math.inf
        high = float(d[used].max()) if used.any() else -math.inf
        slope = intercept = nan
        if total >= 2 and low < high:
            d_mean, s_mean = float((w * d).sum()) / total, float((w * s).sum()) / total
            spread = float((w * (d - d_mean) ** 2).sum())
            slope = float((w * (d - d_mean) * (s - s_mean)).sum()) / spread
            intercept = s_mean - slope * d_mean
        out.append(_sample_value(*_line_zero(slope, intercept, low, high)[:3]))
    return out


@pytest.mark.parametrize("max_distance", [None, 0.9])
def test_bootstrap_lines_from_moments_equal_centred_fits(max_distance: float | None) -> None:
    generator = torch.Generator().manual_seed(2)
    n = 40
    x = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    d = (x - x.T).abs() * 1.5
    noise = torch.randn(n, n, generator=generator, dtype=torch.float64) * 0.3
    s = 1 - 2.5 * d + (noise + noise.T) / 2
    labels = torch.randint(0, 3, (n,), generator=generator)
    pairs = PairSample.from_matrices(s, d, pair_mask(labels, "within"))
    got = _bootstrap_linear_fit(pairs, 60, 7, max_distance).tolist()
    want = centred_bootstrap_lines(pairs, 60, 7, max_distance)
    assert len(got) == len(want) == 60
    for a, b in zip(got, want):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)
    assert sum(math.isfinite(v) for v in got) > 40  # most resamples cross inside their data


def test_bootstrap_of_a_resample_with_one_distance_is_dropped() -> None:
    # 3 examples of one class: a resample drawing a single distinct pair has one distance → no line
    s = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, -0.1], [0.2, -0.1, 1.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.3, 0.6], [0.3, 0.0, 0.9], [0.6, 0.9, 0.0]], dtype=torch.float64)
    pairs = PairSample.from_matrices(s, d, pair_mask(torch.zeros(3, dtype=torch.long), "within"))
    got = _bootstrap_linear_fit(pairs, 40, 0, None).tolist()
    want = centred_bootstrap_lines(pairs, 40, 0, None)
    for a, b in zip(got, want):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9)
    assert any(math.isnan(v) for v in got)


def test_analyze_equals_the_public_functions_one_by_one() -> None:
    _, d, labels, splits = random_problem(36, 3)
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(36, 5, generator=generator)
    gram = (features @ features.T).float()
    d = d.clone()
    d[2, 7] = d[7, 2] = math.inf
    cfg = AnalysisConfig(num_classes=4, bootstrap=25, seed=1, bins=9, critical_length_pairs="within")
    m = analyze(
        gram, labels, (splits > 0).long(), ("train", "val"), step=0, epoch=0, trigger="t",
        distances={"input": d}, config=cfg,
    )  # fmt: skip
    high = float(d[torch.isfinite(d)].max())
    for kind, matrix in (("sign", m.sign), ("cos", m.cos)):
        for pairs in PAIR_KINDS:
            expected = binned_curve(matrix, d, pair_mask(labels, pairs), bins=9, value_range=(0.0, high))
            got = m.curve("input", kind, pairs)
            assert torch.equal(got.count, expected.count)
            torch.testing.assert_close(got.mean, expected.mean, equal_nan=True, rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(got.sem, expected.sem, equal_nan=True, rtol=1e-10, atol=1e-13)
        for estimator in ("zero_crossing", "linear_fit"):
            expected_xi = critical_length(matrix, d, labels, method=estimator, bins=9, bootstrap=25, seed=1)
            got_xi = m.critical_length("input", kind, estimator)
            assert got_xi.status == expected_xi.status
            for field in ("value", "ci_low", "ci_high", "slope", "intercept", "lower_bound"):
                a, b = getattr(got_xi, field), getattr(expected_xi, field)
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), field
