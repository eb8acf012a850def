"""Tests of the pure stiffness analytics against hand computations and loop references."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lightning_stiffness.analytics import (
    BinnedCurve,
    StiffnessSummary,
    binned_curve,
    class_stiffness_matrix,
    cosine_distance_matrix,
    cosine_matrix,
    cosine_similarity_matrix,
    critical_length,
    gradient_diversity,
    input_distances,
    linear_fit_length,
    m_coherence,
    pair_mask,
    preprocess_inputs,
    reorder_by_superclass,
    sign_matrix,
    split_block_summaries,
    summarize,
    superclass_stats,
    zero_crossing_length,
    zero_gradient_mask,
)
from lightning_stiffness.gram.representations import capture_representations

nan = math.nan


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (tests/conftest.py)


def assert_close(actual: Tensor, expected: Sequence[Any], atol: float = 1e-6) -> None:
    torch.testing.assert_close(
        actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0, equal_nan=True
    )


def assert_summary(actual: StiffnessSummary, within: float, between: float, all_: float) -> None:
    for got, want in ((actual.within, within), (actual.between, between), (actual.all, all_)):
        assert isinstance(got, float)
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-6)


# -- Gram → cosine / sign ---------------------------------------------------------------------

# g0 = (1, 0), g1 = (1, 1), g2 = (0, 0) (zero gradient), g3 = (-2, 0)
GRAM = torch.tensor(
    [
        [1.0, 1.0, 0.0, -2.0],
        [1.0, 2.0, 0.0, -2.0],
        [0.0, 0.0, 0.0, 0.0],
        [-2.0, -2.0, 0.0, 4.0],
    ]
)
R = 1 / math.sqrt(2)


def test_cosine_matrix_by_hand_with_zero_gradient() -> None:
    # cos01 = 1/(1·√2), cos03 = -2/(1·2) = -1, cos13 = -2/(√2·2) = -1/√2; example 2 has ‖g‖ = 0 → 0, diagonal too
    expected = [[1, R, 0, -1], [R, 1, 0, -R], [0, 0, 0, 0], [-1, -R, 0, 1]]
    assert_close(cosine_matrix(GRAM), expected)
    assert zero_gradient_mask(GRAM).tolist() == [False, False, True, False]


def test_sign_matrix_by_hand() -> None:
    expected = [[1, 1, 0, -1], [1, 1, 0, -1], [0, 0, 0, 0], [-1, -1, 0, 1]]
    assert_close(sign_matrix(GRAM), expected)
    assert sign_matrix(GRAM).dtype == torch.float32


def test_nonfinite_gradient_gets_no_alignment() -> None:
    gram = GRAM.clone()
    gram[1, :] = nan
    gram[:, 1] = nan
    cos, sign = cosine_matrix(gram), sign_matrix(gram)
    assert torch.isfinite(cos).all() and torch.isfinite(sign).all()
    assert (cos[1] == 0).all() and (cos[:, 1] == 0).all() and (sign[1] == 0).all()
    assert cos[0, 3] == -1 and sign[0, 3] == -1
    gram[1, 1] = math.inf
    assert (cosine_matrix(gram)[1] == 0).all()


def test_cosine_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        cosine_matrix(torch.zeros(2, 3))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.lists(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), min_size=n, max_size=n)
    )
)
def test_cosine_is_bounded_symmetric_with_unit_or_zero_diagonal(rows: list[list[float]]) -> None:
    g = torch.tensor(rows, dtype=torch.float64)
    cos = cosine_matrix(g @ g.T)
    assert (cos.abs() <= 1).all()
    torch.testing.assert_close(cos, cos.T)
    nonzero = g.norm(dim=1) > 0
    assert cos.diagonal().tolist() == nonzero.double().tolist()


# -- m-coherence / gradient diversity -------------------------------------------------------------


def test_m_coherence_and_gradient_diversity() -> None:
    g = torch.tensor([[1.0, 2.0, 3.0]]).repeat(4, 1)
    assert m_coherence(g @ g.T) == pytest.approx(4.0)  # identical gradients → m
    assert gradient_diversity(g @ g.T) == pytest.approx(0.25)
    assert m_coherence(torch.eye(3)) == pytest.approx(1.0)  # orthogonal gradients → 1
    # g0 = (1, 0), g1 = (1, 1): 1ᵀG1 = 1 + 1 + 1 + 2 = 5, tr G = 3
    gram = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    assert m_coherence(gram) == pytest.approx(5 / 3)
    assert gradient_diversity(gram) == pytest.approx(3 / 5)
    opposite = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # g and -g: Σ g_i = 0
    assert m_coherence(opposite) == 0.0
    assert math.isnan(gradient_diversity(opposite))
    assert math.isnan(m_coherence(torch.zeros(3, 3)))


# -- pair masks, class matrix, summaries --------------------------------------------------------


def test_pair_masks() -> None:
    labels = torch.tensor([0, 0, 1, 2])
    within = pair_mask(labels, "within")
    assert within.nonzero().tolist() == [[0, 1], [1, 0]]
    between = pair_mask(labels, "between")
    expected_between = [[i, j] for i in range(4) for j in range(4) if i != j and {i, j} != {0, 1}]
    assert between.nonzero().tolist() == expected_between
    assert pair_mask(labels, "all").sum() == 12 and not pair_mask(labels, "all").diagonal().any()
    assert pair_mask(labels, "within", include_self=True).diagonal().all()
    assert pair_mask(labels, "all", include_self=True).all()
    assert not pair_mask(labels, "between", include_self=True).diagonal().any()
    with pytest.raises(ValueError, match="within"):
        pair_mask(labels, "same")


# Five examples: three of class 0, one of class 1, one of class 2.
LABELS5 = torch.tensor([0, 0, 0, 1, 2])
S5 = torch.tensor(
    [
        [1.0, 0.5, 0.1, -0.2, 0.3],
        [0.5, 1.0, 0.3, 0.4, -0.1],
        [0.1, 0.3, 1.0, 0.0, 0.2],
        [-0.2, 0.4, 0.0, 1.0, -0.5],
        [0.3, -0.1, 0.2, -0.5, 1.0],
    ]
)


def test_class_matrix_by_hand_excludes_self_pairs() -> None:
    # C00 = mean(.5, .1, .3) = .3; C01 = (-.2 + .4 + 0)/3; C02 = (.3 - .1 + .2)/3; C12 = -.5;
    # C11, C22: one example each and i ≠ j → no pairs → NaN; class 3 absent → NaN
    c01, c02 = 0.2 / 3, 0.4 / 3
    expected = [
        [0.3, c01, c02, nan],
        [c01, nan, -0.5, nan],
        [c02, -0.5, nan, nan],
        [nan, nan, nan, nan],
    ]
    assert_close(class_stiffness_matrix(S5, LABELS5, num_classes=4), expected)
    assert class_stiffness_matrix(S5, LABELS5).shape == (3, 3)


def test_class_matrix_include_self() -> None:
    # C00 = (3 self pairs of 1 + 2·(.5 + .1 + .3)) / 9 = 4.8/9; singletons get their self pair, 1
    matrix = class_stiffness_matrix(S5, LABELS5, include_self=True)
    assert matrix[0, 0] == pytest.approx(4.8 / 9)
    assert matrix[1, 1] == 1 and matrix[2, 2] == 1
    assert matrix[1, 2] == pytest.approx(-0.5)


def test_class_matrix_ignores_nonfinite_entries_and_checks_labels() -> None:
    s = S5.clone()
    s[0, 1] = s[1, 0] = nan
    assert class_stiffness_matrix(s, LABELS5)[0, 0] == pytest.approx(0.2)  # mean(.1, .3)
    with pytest.raises(ValueError, match="labels"):
        class_stiffness_matrix(S5, torch.tensor([0, 0, 0, 1, 5]), num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        class_stiffness_matrix(S5, torch.tensor([0, 1]))


def class_matrix_reference(s: Tensor, labels: list[int], num_classes: int, include_self: bool) -> Tensor:
    out = torch.full((num_classes, num_classes), nan, dtype=torch.float64)
    for a in range(num_classes):
        for b in range(num_classes):
            vals = [
                float(s[i, j])
                for i in range(len(labels))
                for j in range(len(labels))
                if labels[i] == a and labels[j] == b and (include_self or i != j)
            ]
            if vals:
                out[a, b] = sum(vals) / len(vals)
    return out


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-1, 1), min_size=n * n, max_size=n * n),
            st.lists(st.integers(0, 2), min_size=n, max_size=n),
        )
    ),
    st.booleans(),
)
def test_class_matrix_matches_loop_and_is_symmetric(data: tuple[list[float], list[int]], include_self: bool) -> None:
    values, labels = data
    n = len(labels)
    raw = torch.tensor(values, dtype=torch.float64).reshape(n, n)
    s = (raw + raw.T) / 2
    matrix = class_stiffness_matrix(s, torch.tensor(labels), 3, include_self=include_self)
    torch.testing.assert_close(matrix, class_matrix_reference(s, labels, 3, include_self), equal_nan=True)
    torch.testing.assert_close(matrix, matrix.T, equal_nan=True)


def test_summarize_uses_eq7_not_pair_mean() -> None:
    # within = nanmean(diag C) = C00 = .3 (C11, C22 NaN)
    # between (Eq. 7) = mean of the 6 off-diagonal entries = (1/15 + 2/15 - .5)/3 = -0.1
    #   (the mean over the 7 between-class pairs would be 0.1/7 instead)
    # all = mean over the 10 pairs i < j = 1.0/10
    assert_summary(summarize(S5, LABELS5), 0.3, -0.1, 0.1)
    # with self pairs: within = mean(4.8/9, 1, 1); all = (10 pairs·2 + 5 ones)/25 = (2 + 5)/25
    assert_summary(summarize(S5, LABELS5, include_self=True), (4.8 / 9 + 2) / 3, -0.1, 7 / 25)


def test_summarize_three_balanced_classes() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    s = torch.zeros(6, 6)
    blocks = {(0, 0): 0.9, (1, 1): 0.6, (2, 2): 0.3, (0, 1): 0.2, (0, 2): -0.4, (1, 2): 0.5}
    for (a, b), v in blocks.items():
        s[2 * a : 2 * a + 2, 2 * b : 2 * b + 2] = v
        s[2 * b : 2 * b + 2, 2 * a : 2 * a + 2] = v
    # within = (.9 + .6 + .3)/3 = .6; between = (2·.2 + 2·(-.4) + 2·.5)/6 = .1
    # all: 3 same-class pairs (.9, .6, .3) + 12 cross pairs (4 each of .2, -.4, .5) over 15
    assert_summary(summarize(s, labels), 0.6, 0.1, (1.8 + 4 * 0.3) / 15)


def test_split_block_summaries_by_hand() -> None:
    splits = torch.tensor([0, 0, 1, 1, 1])  # examples 0, 1 train; 2, 3, 4 val
    blocks = split_block_summaries(S5, LABELS5, splits, ["train", "val"])
    assert list(blocks) == ["train-train", "train-val", "val-val"]
    # train-train: only pair (0,1) = .5, same class
    assert_summary(blocks["train-train"], 0.5, nan, 0.5)
    # train-val: (0,2)=.1, (1,2)=.3 → C00 = .2; (0,3)=-.2, (1,3)=.4 → C01 = .1; (0,4)=.3, (1,4)=-.1 → C02 = .1
    assert_summary(blocks["train-val"], 0.2, 0.1, 0.8 / 6)
    # val-val: (2,3)=0 → C01; (2,4)=.2 → C02; (3,4)=-.5 → C12; no same-class pair
    assert_summary(blocks["val-val"], nan, -0.1, -0.1)


def test_split_block_summaries_only_present_splits_and_self_pairs() -> None:
    splits = torch.tensor([2, 2, 2, 2, 2])
    blocks = split_block_summaries(S5, LABELS5, splits, ["train", "val", "test"])
    assert list(blocks) == ["test-test"]
    assert blocks["test-test"] == summarize(S5, LABELS5)
    with_self = split_block_summaries(S5, LABELS5, splits, ["train", "val", "test"], include_self=True)
    assert with_self["test-test"] == summarize(S5, LABELS5, include_self=True)
    with pytest.raises(ValueError, match="split_names"):
        split_block_summaries(S5, LABELS5, torch.tensor([0, 0, 1, 1, 3]), ["train", "val"])


# -- distances ------------------------------------------------------------------------------------


def test_preprocess_standardizes_then_normalizes() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    # feature 0: mean 3, std √(8/3) → (-1.22, 0, 1.22); feature 1 constant → 0; then unit rows (zero row stays)
    assert_close(preprocess_inputs(x), [[-1, 0], [0, 0], [1, 0]])
    # without standardisation only the unit-length step: (1,2)/√5, (3,2)/√13, (5,2)/√29
    expected = [[1 / 5**0.5, 2 / 5**0.5], [3 / 13**0.5, 2 / 13**0.5], [5 / 29**0.5, 2 / 29**0.5]]
    assert_close(preprocess_inputs(x, standardize=False), expected)


def test_preprocess_flattens_and_gives_unit_rows() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3, 3) * 5 + 2
    out = preprocess_inputs(x)
    assert out.shape == (6, 18) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))
    # standardised features have zero mean across examples before normalisation: check the pre-normalised direction
    standardized = (x.reshape(6, -1) - x.reshape(6, -1).mean(0)) / x.reshape(6, -1).std(0, correction=0)
    torch.testing.assert_close(out, standardized / standardized.norm(dim=1, keepdim=True))
    assert preprocess_inputs(torch.arange(6).reshape(3, 2)).dtype == torch.float32


def test_cosine_similarity_and_distance_by_hand() -> None:
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0]])
    assert_close(
        cosine_similarity_matrix(features), [[1, 0, -1, 0], [0, 1, 0, 0], [-1, 0, 1, 0], [0, 0, 0, 0]]
    )  # a zero row is 0 everywhere, itself included
    assert_close(cosine_distance_matrix(features), [[0, 1, 2, 1], [1, 0, 1, 1], [2, 1, 0, 1], [1, 1, 1, 1]])


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.floats(-100, 100), min_size=4 * n, max_size=4 * n)))
def test_cosine_distance_in_range(values: list[float]) -> None:
    x = torch.tensor(values).reshape(-1, 4)
    d = input_distances(x)
    assert ((d >= 0) & (d <= 2)).all()
    torch.testing.assert_close(d, d.T)


def test_input_distance_is_half_squared_euclidean_on_the_sphere() -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 7, dtype=torch.float64)
    unit = preprocess_inputs(x)
    torch.testing.assert_close(input_distances(x), 0.5 * torch.cdist(unit, unit) ** 2)


class TwoArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return self.body(x) * scale


class TupleOut(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


class SumOut(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=0)


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(3, 2))


def test_capture_representations_shapes_values_and_modes() -> None:
    model = small_mlp()
    model.train()
    model[3].eval()  # a mixed mode that must come back as it was
    x = torch.randn(5, 4)
    reps = capture_representations(model, x, ["0", "3"])
    assert list(reps) == ["0", "3"]
    assert reps["0"].shape == (5, 3) and reps["3"].shape == (5, 2)
    with torch.no_grad():
        hidden = model[0](x)
        expected_out = model[3](torch.relu(hidden))  # eval: dropout off
    torch.testing.assert_close(reps["0"], hidden)  # a copy: the in-place ReLU did not clip it
    assert (reps["0"] < 0).any()
    torch.testing.assert_close(reps["3"], expected_out)
    assert not reps["3"].requires_grad
    assert [m.training for m in model.modules()] == [True, True, True, True, False]


def test_capture_representations_input_structures() -> None:
    model = TwoArgs()
    x, scale = torch.randn(4, 3), torch.tensor(2.0)
    by_tuple = capture_representations(model, (x, scale), ["body", ""])
    by_mapping = capture_representations(model, {"x": x, "scale": scale}, ["body"])
    torch.testing.assert_close(by_tuple["body"], by_mapping["body"])
    torch.testing.assert_close(by_tuple[""], 2 * by_tuple["body"])
    images = capture_representations(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(3, 1, 5, 5), ["0"])
    assert images["0"].shape == (3, 2 * 3 * 3)


def test_capture_representations_errors_restore_modes() -> None:
    model = small_mlp()
    with pytest.raises(ValueError, match=r"valid names are \['0', '1', '2', '3'\]"):
        capture_representations(model, torch.randn(2, 4), ["4"])
    with pytest.raises(ValueError, match="not called"):
        capture_representations(TwoArgs(), (torch.randn(2, 3), torch.tensor(1.0)), ["unused"])
    failing = nn.Sequential(nn.Linear(4, 4), TupleOut())
    failing.train()
    with pytest.raises(ValueError, match="not a tensor"):
        capture_representations(failing, torch.randn(2, 4), ["1"])
    assert all(m.training for m in failing.modules())
    with pytest.raises(ValueError, match="leading size N=3"):
        capture_representations(nn.Sequential(nn.Linear(4, 4), SumOut()), torch.randn(3, 4), ["1"])


# -- stiffness vs distance and critical length -------------------------------------------------


def random_pairs(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, n, generator=generator) * 2 - 1
    dist = torch.rand(n, n, generator=generator) * 1.5
    labels = torch.randint(0, 3, (n,), generator=generator)
    return (raw + raw.T) / 2, (dist + dist.T) / 2, labels


def test_binned_curve_matches_loop() -> None:
    s, d, labels = random_pairs(12, 0)
    mask = pair_mask(labels, "between")
    curve = binned_curve(s, d, mask, bins=5)
    edges = curve.edges.tolist()
    binned: list[list[float]] = [[] for _ in range(5)]
    high = max(float(d[i, j]) for i in range(12) for j in range(i + 1, 12) if mask[i, j])
    assert edges[0] == 0 and edges[-1] == pytest.approx(high)
    for i in range(12):
        for j in range(i + 1, 12):
            if mask[i, j]:
                k = next(k for k in range(5) if float(d[i, j]) < edges[k + 1] or k == 4)
                binned[k].append(float(s[i, j]))
    assert curve.count.tolist() == [len(b) for b in binned]
    assert_close(curve.mean, [statistics.fmean(b) if b else nan for b in binned])
    assert_close(curve.sem, [statistics.stdev(b) / len(b) ** 0.5 if len(b) > 1 else nan for b in binned])
    assert_close(curve.centers, [(edges[k] + edges[k + 1]) / 2 for k in range(5)])


def test_binned_curve_value_range_drops_outside_pairs() -> None:
    s, d, labels = random_pairs(10, 1)
    mask = pair_mask(labels, "all")
    curve = binned_curve(s, d, mask, bins=4, value_range=(0.5, 1.0))
    upper = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
    assert int(curve.count.sum()) == int((upper & (d >= 0.5) & (d <= 1.0)).sum())
    assert_close(curve.edges, [0.5, 0.625, 0.75, 0.875, 1.0])


def curve_from(means: list[float], counts: list[int], width: float = 0.1) -> BinnedCurve:
    edges = torch.arange(len(means) + 1, dtype=torch.float64) * width
    return BinnedCurve(
        edges=edges,
        centers=(edges[:-1] + edges[1:]) / 2,
        mean=torch.tensor(means, dtype=torch.float64),
        sem=torch.full((len(means),), nan),
        count=torch.tensor(counts),
    )


def test_zero_crossing_interpolates_over_nonempty_bins() -> None:
    # centres .05 .15 (.25 empty) .35 .45; means .8 .4 – -.2 -.5: crossing between .15 (.4) and .35 (-.2)
    # ξ = .15 + .4/(.4 + .2)·(.35 - .15) = .15 + .2·2/3
    result = zero_crossing_length(curve_from([0.8, 0.4, nan, -0.2, -0.5], [3, 2, 0, 4, 1]))
    assert result.value == pytest.approx(0.15 + 0.2 * 2 / 3)
    assert result.crossed and result.status == "measured" and result.method == "zero_crossing"
    assert math.isnan(result.lower_bound)
    assert result.window == (0.0, pytest.approx(0.5))
    assert math.isnan(result.slope) and math.isnan(result.ci_low)


def test_zero_crossing_censored_first_bin_negative_and_empty() -> None:
    censored = zero_crossing_length(curve_from([0.5, 0.4, 0.3, nan, nan], [1, 1, 1, 0, 0]))
    # never crosses: no ξ, only ξ > 0.25, the centre of the last non-empty bin (not its upper edge 0.3)
    assert math.isnan(censored.value) and not censored.crossed and censored.status == "censored"
    assert censored.lower_bound == pytest.approx(0.25) and censored.bound_or_value == pytest.approx(0.25)
    at_zero = zero_crossing_length(curve_from([0.5, 0.0], [2, 2]))
    assert at_zero.value == pytest.approx(0.15) and at_zero.crossed  # reaching exactly 0 counts
    first = zero_crossing_length(curve_from([nan, -0.1, 0.5], [0, 3, 2]))
    assert first.value == pytest.approx(0.15) and first.crossed  # first non-empty bin already ≤ 0 → its centre
    empty = zero_crossing_length(curve_from([nan, nan], [0, 0]))
    assert math.isnan(empty.value) and not empty.crossed and empty.status == "undefined"
    assert math.isnan(empty.lower_bound)


def line_data(n: int, intercept: float, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(7)
    raw = torch.rand(n, n, generator=generator, dtype=torch.float64)
    d = (raw + raw.T) / 2
    return intercept + slope * d, d, torch.zeros(n, dtype=torch.long)


def test_linear_fit_recovers_exact_line() -> None:
    s, d, labels = line_data(8, 1.0, -2.0)  # S = 1 - 2d → ξ = 0.5
    result = linear_fit_length(s, d, pair_mask(labels, "within"))
    assert result.value == pytest.approx(0.5)
    assert result.crossed and result.status == "measured" and result.method == "linear_fit"
    assert math.isnan(result.lower_bound) and math.isnan(result.extrapolation)
    assert result.slope == pytest.approx(-2.0) and result.intercept == pytest.approx(1.0)
    upper = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)
    assert result.window == (0.0, pytest.approx(float(d[upper].max())))


def test_linear_fit_window_and_no_decay() -> None:
    s, d, labels = line_data(10, 1.0, -2.0)
    s = torch.where(d > 0.4, torch.full_like(s, 5.0), s)  # beyond the window the line is broken
    mask = pair_mask(labels, "within")
    windowed = linear_fit_length(s, d, mask, max_distance=0.4)
    upper = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
    fitted_max = float(d[upper & (d <= 0.4)].max())
    # the zero at 0.5 lies beyond the fitted distances (≤ 0.4): extrapolated, never a plain ξ
    assert math.isnan(windowed.value) and windowed.window == (0.0, 0.4) and not windowed.crossed
    assert windowed.status == "extrapolated" and windowed.extrapolation == pytest.approx(0.5)
    assert windowed.lower_bound == pytest.approx(fitted_max)
    shallow = linear_fit_length(*line_data(8, 1.0, -0.1)[:2], mask=pair_mask(torch.zeros(8), "all"))
    assert math.isnan(shallow.value) and shallow.status == "extrapolated"  # zero at 10, far beyond d ≤ 1
    assert shallow.extrapolation == pytest.approx(10.0) and shallow.lower_bound < 1
    rising = linear_fit_length(*line_data(8, 0.1, 1.0)[:2], mask=pair_mask(torch.zeros(8), "all"))
    assert math.isnan(rising.value) and not rising.crossed and rising.slope == pytest.approx(1.0)
    assert rising.status == "censored" and rising.lower_bound < 1  # positive and rising: ξ beyond the data
    flat_negative = linear_fit_length(*line_data(8, -0.5, 0.2)[:2], mask=pair_mask(torch.zeros(8), "all"))
    assert flat_negative.status == "undefined" and math.isnan(flat_negative.lower_bound)  # never above zero
    negative = linear_fit_length(*line_data(8, -0.1, -1.0)[:2], mask=pair_mask(torch.zeros(8), "all"))
    assert math.isnan(negative.value) and not negative.crossed  # crossing at d = -0.1 < 0
    assert negative.status == "undefined"
    d_far = line_data(8, 0.0, 0.0)[1] * 0.5 + 0.6  # only distances in [0.6, 1.1] are seen
    below = linear_fit_length(1 - 2 * d_far, d_far, pair_mask(torch.zeros(8), "all"))  # S = 1 - 2d: zero at 0.5
    assert math.isnan(below.value) and below.status == "extrapolated"
    assert below.extrapolation == pytest.approx(0.5) and math.isnan(below.lower_bound)
    constant_d = linear_fit_length(torch.eye(3), torch.ones(3, 3), pair_mask(torch.zeros(3), "all"))
    assert math.isnan(constant_d.value) and math.isnan(constant_d.slope) and constant_d.status == "undefined"


def test_critical_length_dispatch_and_pair_kind() -> None:
    s, d, _ = line_data(12, 1.0, -2.0)
    labels = torch.tensor([0, 1] * 6)
    # between-class pairs follow a different line: S = 0.6 - 2d → ξ = 0.3 there
    s = torch.where(labels[:, None] != labels[None, :], s - 0.4, s)
    within = critical_length(s, d, labels, method="linear_fit")
    between = critical_length(s, d, labels, method="linear_fit", pairs="between")
    assert within.value == pytest.approx(0.5) and between.value == pytest.approx(0.3)
    zero = critical_length(s, d, labels, bins=20)
    assert zero.method == "zero_crossing" and zero.value == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValueError, match="method"):
        critical_length(s, d, labels, method="fit")


def noisy_decay(n: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(11)
    x = torch.rand(n, 1, generator=generator)
    d = (x - x.T).abs()  # distances on a line, in [0, 1]
    noise = torch.randn(n, n, generator=generator) * 0.3
    s = 1 - 2.5 * d + (noise + noise.T) / 2  # ξ ≈ 0.4
    return s, d, torch.randint(0, 2, (n,), generator=generator)


@pytest.mark.parametrize("method", ["zero_crossing", "linear_fit"])
def test_bootstrap_ci_contains_estimate_and_is_seeded(method: str) -> None:
    s, d, labels = noisy_decay(60)
    result = critical_length(s, d, labels, method=method, bins=15, bootstrap=50, seed=3)
    assert result.crossed and result.value == pytest.approx(0.4, abs=0.1)
    assert result.ci_low <= result.value <= result.ci_high
    assert result.ci_high - result.ci_low < 0.3
    again = critical_length(s, d, labels, method=method, bins=15, bootstrap=50, seed=3)
    assert again == result
    other = critical_length(s, d, labels, method=method, bins=15, bootstrap=50, seed=4)
    assert (other.ci_low, other.ci_high) != (result.ci_low, result.ci_high)
    assert math.isnan(critical_length(s, d, labels, method=method).ci_low)


@pytest.mark.parametrize("method", ["zero_crossing", "linear_fit"])
def test_bootstrap_equals_explicit_resampled_matrices(method: str) -> None:
    s, d, labels = noisy_decay(25)
    point = critical_length(s, d, labels, method=method, bins=6, max_distance=0.8)
    draws = torch.randint(0, 25, (30, 25), generator=torch.Generator().manual_seed(5))
    values = []  # each resample's ξ: its value if measured, +inf if beyond its data, else dropped
    for index in draws:
        sub_s, sub_d = s[index][:, index], d[index][:, index]
        mask = pair_mask(labels[index], "within") & (index[:, None] != index[None, :])  # no two copies of one example
        if method == "linear_fit":
            xi = linear_fit_length(sub_s, sub_d, mask, max_distance=0.8)
        else:
            assert point.window is not None
            xi = zero_crossing_length(binned_curve(sub_s, sub_d, mask, bins=6, value_range=point.window))
        values.append(xi.value if xi.crossed else (math.inf if math.isfinite(xi.lower_bound) else nan))
    kept = sorted(v for v in values if not math.isnan(v))
    assert point.crossed and math.isfinite(kept[int(0.9 * (len(kept) - 1)) + 1])
    qs = torch.tensor([0.1, 0.9], dtype=torch.float64)
    expected = torch.quantile(torch.tensor(kept, dtype=torch.float64), qs).tolist()
    result = critical_length(
        s, d, labels, method=method, bins=6, max_distance=0.8, bootstrap=30, seed=5, confidence=0.8
    )
    assert (result.ci_low, result.ci_high) == (pytest.approx(expected[0]), pytest.approx(expected[1]))


# -- super-classes ---------------------------------------------------------------------------------


def test_reorder_by_superclass() -> None:
    matrix = torch.arange(25.0).reshape(5, 5)  # M[i, j] = 5i + j
    reordered, order, boundaries = reorder_by_superclass(matrix, [1, 0, 1, 0, 2])
    assert order.tolist() == [1, 3, 0, 2, 4]  # stable within each super-class
    assert boundaries == [2, 4]
    assert reordered[0].tolist() == [6.0, 8.0, 5.0, 7.0, 9.0]  # row of class 1
    assert reordered[:, 0].tolist() == [6.0, 16.0, 1.0, 11.0, 21.0]
    with pytest.raises(ValueError, match="one super-class per fine class"):
        reorder_by_superclass(matrix, [0, 1])


def test_superclass_stats_by_hand() -> None:
    matrix = torch.tensor(
        [
            [1.0, 0.6, 0.1, 0.2],
            [0.6, 1.0, 0.0, 0.3],
            [0.1, 0.0, 1.0, 0.8],
            [0.2, 0.3, 0.8, 1.0],
        ]
    )
    # super-classes {0,1}, {2,3}: same = (.6 + .8)/2 = .7; different = (.1 + .2 + 0 + .3)/4 = .15
    # the 3 equally likely partitions give differences .55, -.2, -.35 → p ≈ 1/3
    stats = superclass_stats(matrix, [0, 0, 1, 1], permutations=3000, seed=1)
    assert (stats.same, stats.different, stats.difference) == (
        pytest.approx(0.7),
        pytest.approx(0.15),
        pytest.approx(0.55),
    )
    assert stats.p_value == pytest.approx(1 / 3, abs=0.04) and stats.permutations == 3000
    assert superclass_stats(matrix, [0, 0, 1, 1], permutations=200, seed=1) == superclass_stats(
        matrix, [0, 0, 1, 1], permutations=200, seed=1
    )
    matrix[0, 3] = matrix[3, 0] = nan  # ignored: different = (.1 + 0 + .3)/3
    assert superclass_stats(matrix, torch.tensor([0, 0, 1, 1]), permutations=10).different == pytest.approx(0.4 / 3)


def test_superclass_stats_planted_structure_vs_none() -> None:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.arange(12) // 3  # 4 super-classes of 3 fine classes
    noise = torch.randn(12, 12, generator=generator) * 0.05
    noise = (noise + noise.T) / 2
    planted = torch.where(coarse[:, None] == coarse[None, :], 0.8, 0.0) + noise
    stats = superclass_stats(planted, coarse, permutations=500)
    assert stats.difference == pytest.approx(0.8, abs=0.05)
    assert stats.p_value == pytest.approx(1 / 501)  # no permutation reaches the planted partition's difference
    unstructured = superclass_stats(noise * 20, coarse, permutations=500)
    assert unstructured.p_value > 0.05


def test_bootstrap_quantiles_with_resamples_beyond_the_data() -> None:
    from lightning_stiffness.analytics.critical_length import _quantiles

    finite = torch.tensor([0.3, 0.1, 0.4, 0.2], dtype=torch.float64)
    qs = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    assert _quantiles(finite, qs.tolist()) == pytest.approx(torch.quantile(finite, qs).tolist())
    # two of five resamples never cross (ξ beyond their data, +inf): the upper end is unbounded, not NaN
    censored = torch.tensor([0.1, math.inf, 0.2, math.inf, 0.3], dtype=torch.float64)
    low, mid, high = _quantiles(censored, [0.1, 0.5, 0.9])
    assert low == pytest.approx(0.14) and mid == pytest.approx(0.3) and high == math.inf


def test_critical_length_of_a_curve_that_never_crosses_is_not_a_number() -> None:
    """The demo's failure: stiffness positive at every distance gave ξ = the upper bin edge."""
    s, d, labels = line_data(12, 1.0, -0.2)  # S ≥ 0.8 on d ∈ [0, 1]
    for method in ("zero_crossing", "linear_fit"):
        xi = critical_length(s, d, labels, method=method, bins=10, bootstrap=20)
        assert math.isnan(xi.value) and not xi.crossed, method
        assert xi.status == ("censored" if method == "zero_crossing" else "extrapolated"), method
        assert 0 < xi.lower_bound <= float(d.max()), method
        assert math.isnan(xi.ci_low) and math.isnan(xi.ci_high), method


def test_analytics_is_pure_math_and_old_names_still_resolve() -> None:
    """The stiffness-math package never calls a model: no module of it imports the Gram engine or
    torch.nn. The old homes keep working with a DeprecationWarning."""
    import importlib
    import pkgutil
    import sys

    import lightning_stiffness.analytics as package

    for info in pkgutil.iter_modules(package.__path__):
        source = Path(package.__path__[0], f"{info.name}.py").read_text()
        assert "lightning_stiffness.gram" not in source and "from torch import nn" not in source, info.name
        assert "call_model" not in source, info.name
    with pytest.warns(DeprecationWarning, match="gram.representations"):
        from lightning_stiffness.analytics import capture_representations as old
    assert old is capture_representations
    sys.modules.pop("lightning_stiffness.analysis", None)
    with pytest.warns(DeprecationWarning, match="lightning_stiffness.analysis is deprecated"):
        shim = importlib.import_module("lightning_stiffness.analysis")
    from lightning_stiffness.analytics import analyze
    from lightning_stiffness.log import scalar_metrics

    assert shim.analyze is analyze and shim.scalar_metrics is scalar_metrics
