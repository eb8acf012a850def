"""The paper's input preprocessing (standardise, floor the std, project to the unit sphere) is one
function, and its three users (demo, experiments' datamodules, input-space distance) produce
exactly its output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_stiffness.analytics import preprocess_inputs
from lightning_stiffness.preprocessing import (
    MIN_STD_FRACTION,
    feature_statistics,
    standardize_to_unit_sphere,
    std_floor,
)


def _reference(x: torch.Tensor, train: torch.Tensor, fraction: float) -> torch.Tensor:
    """Independent float64 loop; statistics of ``train``, floor = fraction · std of all its values pooled."""
    train = train.double().reshape(len(train), -1)
    mean, std = train.mean(0), train.std(0, correction=0)
    pooled = float(train.std(correction=0))
    x = x.double().reshape(len(x), -1)
    out = torch.zeros_like(x)
    for n in range(len(x)):
        z = torch.tensor([(x[n, d] - mean[d]) / max(float(std[d]), fraction * pooled) for d in range(x.shape[1])])
        out[n] = z / z.norm() if z.norm() > 0 else z
    return out


def test_values_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, std = feature_statistics(x)
    torch.testing.assert_close(mean, torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(std, torch.tensor([(8 / 3) ** 0.5, 0.0]))
    # pooled values {1, 3, 5, 2, 2, 2}: mean 2.5, variance (2.25 + 0.25 + 6.25 + 3 · 0.25) / 6 = 19/12
    torch.testing.assert_close(std_floor(mean, std), torch.tensor(MIN_STD_FRACTION * (19 / 12) ** 0.5))
    # feature 1 constant → exactly 0; feature 0 → ±1.22 / 0, then unit rows (the zero row stays zero)
    assert standardize_to_unit_sphere(x).tolist() == [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]


def test_floor_against_float64_loop() -> None:
    torch.manual_seed(0)
    train = torch.randn(40, 6) * torch.tensor([3.0, 1.0, 2.0, 0.01, 0.2, 0.0]) + 5
    test = torch.randn(7, 6) * 2 + 5
    mean, std = feature_statistics(train)
    floor = float(std_floor(mean, std))
    pooled = float(train.double().std(correction=0))  # std of all 240 values, independently of std_floor
    assert floor == pytest.approx(MIN_STD_FRACTION * pooled, rel=1e-6)
    assert (std[3:] < floor).all() and (std[:3] > floor).all(), "features 3-5 are floored"
    out = standardize_to_unit_sphere(test, mean, std)
    torch.testing.assert_close(out.double(), _reference(test, train, MIN_STD_FRACTION), rtol=1e-5, atol=1e-6)
    no_floor = standardize_to_unit_sphere(test, mean, std, fraction=0.0)
    assert (out - no_floor).abs().max() > 0.1, "the floor changes the result when a feature hardly varies"


def test_scale_invariant_and_shape_preserving() -> None:
    torch.manual_seed(1)
    images = torch.rand(9, 1, 4, 4)
    images[:, :, 0, :] = 0.0  # a constant border row
    images[0, 0, 1, 1] += 0.001  # and a pixel that hardly varies
    mean, std = feature_statistics(images)
    out = standardize_to_unit_sphere(images, mean, std)
    assert out.shape == images.shape
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.ones(9))
    assert (out[:, :, 0, :] == 0).all()
    raw = images * 255
    torch.testing.assert_close(standardize_to_unit_sphere(raw, *feature_statistics(raw)), out)
    ints = torch.randint(0, 17, (5, 8))
    assert standardize_to_unit_sphere(ints).dtype == torch.float32
    assert standardize_to_unit_sphere(ints.double()).dtype == torch.float64


def test_refuses_mismatched_statistics() -> None:
    with pytest.raises(ValueError, match="both mean and std"):
        standardize_to_unit_sphere(torch.ones(2, 3), mean=torch.zeros(3))
    with pytest.raises(ValueError, match="shape of one example"):
        standardize_to_unit_sphere(torch.ones(2, 3), torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="N >= 1"):
        feature_statistics(torch.ones(0, 3))


def test_all_three_users_give_the_same_output() -> None:
    """On real 8×8 digits, where the floor is active (border pixels nearly constant), the demo,
    the datamodules' transform and the input-distance preprocessing all equal the one function."""
    from sklearn.datasets import load_digits

    from lightning_stiffness.demo import load_digits_dataset
    from lightning_stiffness.experiments import StandardizeUnitNorm

    images, _ = load_digits(return_X_y=True)
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x = x[order]
    n_train = int(0.8 * len(x))
    mean, std = feature_statistics(x[:n_train])
    floor = std_floor(mean, std)
    assert ((std > 0) & (std < floor)).any(), "the digits exercise the floor"
    expected = standardize_to_unit_sphere(x, mean, std)

    train, val = load_digits_dataset("digits", seed=0)
    torch.testing.assert_close(torch.cat([train.tensors[0], val.tensors[0]]), expected, rtol=0, atol=0)

    transform = StandardizeUnitNorm(mean.reshape(1, 8, 8), std.reshape(1, 8, 8))
    per_image = torch.stack([transform(img.reshape(1, 8, 8)) for img in x[:50]]).flatten(1)
    torch.testing.assert_close(per_image, expected[:50], rtol=1e-6, atol=1e-7)

    probe = x[:60]
    torch.testing.assert_close(preprocess_inputs(probe), standardize_to_unit_sphere(probe), rtol=0, atol=0)
    probe_mean, probe_std = feature_statistics(probe)
    assert ((probe_std > 0) & (probe_std < std_floor(probe_mean, probe_std))).any()
