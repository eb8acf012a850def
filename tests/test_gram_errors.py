"""Bad input gets a clear error; ill-conditioned input gets a clear warning and an exact result."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram import per_example_gram, per_example_gram_blocks
from tests.conftest import double_model, independent_gram, rel_err
from tests.zoo import ZOO

pytestmark = pytest.mark.usefixtures("single_thread")

METHODS = ["hooks", "vmap", "loop", "auto"]


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.parametrize("method", METHODS)
def test_mismatched_number_of_examples(method: str) -> None:
    with pytest.raises(ValueError, match=r"disagree on the number of examples.*N=6"):
        per_example_gram(small_mlp(), torch.randn(5, 4), torch.randint(0, 3, (6,)), method=method)


def test_scalar_and_empty_targets() -> None:
    with pytest.raises(ValueError, match="one entry per example"):
        per_example_gram(small_mlp(), torch.randn(5, 4), torch.tensor(1))
    with pytest.raises(ValueError, match="empty"):
        per_example_gram(small_mlp(), torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match=r"targets must be a torch\.Tensor"):
        per_example_gram(small_mlp(), torch.randn(5, 4), [0, 1, 2, 0, 1])


@pytest.mark.parametrize("method", METHODS)
def test_loss_fn_returning_a_scalar(method: str) -> None:
    def mean_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    with pytest.raises(ValueError, match=r"loss_fn returned a scalar.*reduction='none'"):
        per_example_gram(small_mlp(), torch.randn(5, 4), torch.randint(0, 3, (5,)), loss_fn=mean_loss, method=method)


@pytest.mark.parametrize("method", ["hooks", "loop"])
def test_loss_fn_with_wrong_shape(method: str) -> None:
    def token_losses(outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, reduction="none").repeat(2)

    with pytest.raises(ValueError, match=r"per-example losses of shape \([15],\), got shape \([210]+,\)"):
        per_example_gram(small_mlp(), torch.randn(5, 4), torch.randint(0, 3, (5,)), loss_fn=token_losses, method=method)


def test_model_without_trainable_parameters() -> None:
    model = small_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        per_example_gram(model, torch.randn(5, 4), torch.randint(0, 3, (5,)))


def test_unknown_method_and_layer_strategy() -> None:
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match=r"method must be one of .*'jacrev'"):
        per_example_gram(small_mlp(), x, y, method="jacrev")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer_path must be"):
        per_example_gram(small_mlp(), x, y, layer_path="fast")  # type: ignore[arg-type]


def test_unknown_or_foreign_params() -> None:
    model = small_mlp()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match=r"'encoder\.weight' is neither a parameter nor a module name"):
        per_example_gram(model, x, y, params=["encoder.weight"])
    with pytest.raises(ValueError, match="Parameter that does not belong to the model"):
        per_example_gram(model, x, y, params=[nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="Module that is not part of the model"):
        per_example_gram(model, x, y, params=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected names, Parameters or Modules"):
        per_example_gram(model, x, y, params=[3])
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        per_example_gram(model, x, y, params=["0.weight"])


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module"):
        per_example_gram(lambda x: x, torch.randn(5, 4), torch.randint(0, 3, (5,)))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_batchnorm_without_running_stats_is_rejected(method: str) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(), nn.LazyLinear(2)
    )
    x = torch.randn(4, 2, 5, 5)
    model(x)
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm2d\) has track_running_stats=False"):
        per_example_gram(model, x, torch.randint(0, 2, (4,)), method=method)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_nonfinite_gradients_are_counted_and_reported(method: str, bad: float) -> None:
    model = small_mlp()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    x[2, 1] = bad
    with pytest.warns(RuntimeWarning, match=r"gradients of 1 of 6 examples are not finite"):
        result = per_example_gram_blocks(model, x, y, method=method)
    assert result.nonfinite_examples == 1
    assert not torch.isfinite(result.gram[2, 2])
    # the other examples' Gram is still exact
    keep = [0, 1, 3, 4, 5]
    clean = per_example_gram(model, x[keep], y[keep], method=method)
    torch.testing.assert_close(result.gram[keep][:, keep], clean, rtol=1e-6, atol=1e-7)


def test_nonfinite_count_for_two_bad_examples() -> None:
    model = small_mlp()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    x[1, 0] = float("nan")
    x[4, 3] = float("-inf")
    with pytest.warns(RuntimeWarning, match=r"2 of 6 examples"):
        result = per_example_gram_blocks(model, x, y)
    assert result.nonfinite_examples == 2


def test_finite_input_reports_no_nonfinite_examples() -> None:
    model = small_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = per_example_gram_blocks(model, torch.randn(6, 4), torch.randint(0, 3, (6,)))
    assert result.nonfinite_examples == 0


class TimeFirst(nn.Module):
    """Inputs are (N, T, d) but the first Linear runs on the time-first transpose (T, N, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc(x.transpose(0, 1)))  # (T, N, 5)
        return self.head(h.mean(dim=0))


@pytest.mark.parametrize("method", ["hooks", "auto"])
def test_time_first_linear_uses_its_rule_on_the_example_axis(method: str) -> None:
    """The shape trace with one example finds the examples on axis 1 of ``fc``'s (T, N, d) calls;
    the Linear rule takes them moved to the front, exactly and without a fallback."""
    torch.manual_seed(0)
    model = TimeFirst()
    x, y = torch.randn(6, 3, 4), torch.randint(0, 3, (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = per_example_gram_blocks(model, x, y, method=method)
    assert result.paths["fc.weight"] in ("kernel_trick", "materialize")
    assert result.paths["fc.bias"] == "dense"
    assert result.paths["head.weight"] in ("kernel_trick", "materialize")
    assert rel_err(result.gram, independent_gram(double_model(model), x.double(), y)) <= 1e-5


def test_zoo_model_error_does_not_leave_hooks() -> None:
    case = ZOO["cnn"]()
    with pytest.raises(ValueError, match="scalar"):
        per_example_gram(case.model, case.inputs, case.targets, loss_fn=lambda o, t: F.cross_entropy(o, t))
    assert all(not m._forward_hooks for m in case.model.modules())


def test_auto_falls_back_to_vmap_when_the_capture_pass_breaks() -> None:
    """A forward that fails only under the kernel engine's hooks (here: it refuses to run while
    a forward hook is registered) still gets an exact Gram from method='auto'."""
    import warnings

    from lightning_stiffness import per_example_gram_blocks

    class HookHostile(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.fc._forward_hooks:
                raise RuntimeError("this model does not support forward hooks")
            return self.fc(x)

    torch.manual_seed(0)
    model, x, y = HookHostile(), torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = per_example_gram_blocks(model, x, y, method="auto")
    assert any("kernel engine failed" in str(w.message) for w in caught)
    assert result.method == "vmap" and set(result.paths.values()) == {"vmap"}
    reference = per_example_gram_blocks(model, x, y, method="loop").gram
    assert torch.allclose(result.gram, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="forward hooks"):
        per_example_gram_blocks(model, x, y, method="hooks")
