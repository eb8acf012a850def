"""Affine parameters of LayerNorm, RMSNorm, GroupNorm and BatchNorm (eval, running statistics).

All four compute ``y = γ ⊙ x̂ + β`` with a per-example normalised ``x̂``, so
``∂ℓ_n/∂γ = Σ b_n ⊙ x̂_n`` and ``∂ℓ_n/∂β = Σ b_n``, summed over the positions that share the
scale. These gradients are small (one value per feature or channel) and are materialised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__ = ["BatchNormEvalRule", "GroupNormRule", "LayerNormRule"]


def _affine_grads(
    module: nn.Module, normed: Tensor, grad_out: Tensor, feature_dims: list[int]
) -> dict[str, PerExampleGrad]:
    """Sum ``b ⊙ x̂`` and ``b`` over every dimension except the batch and ``feature_dims``."""
    n = grad_out.shape[0]
    reduce = [d for d in range(1, grad_out.dim()) if d not in feature_dims]
    grads: dict[str, PerExampleGrad] = {}
    if getattr(module, "weight", None) is not None:
        prod = grad_out * normed
        grads["weight"] = (prod.sum(dim=reduce) if reduce else prod).reshape(n, -1)
    if getattr(module, "bias", None) is not None:
        grads["bias"] = (grad_out.sum(dim=reduce) if reduce else grad_out).reshape(n, -1)
    return grads


def _trailing_dims(x: Tensor, count: int) -> list[int]:
    return list(range(x.dim() - count, x.dim()))


@register_rule(nn.LayerNorm)
class LayerNormRule(LayerRule):
    example_axis_movable = True

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.LayerNorm)
        shape = tuple(module.normalized_shape)
        normed = F.layer_norm(inp, shape, None, None, module.eps)
        return _affine_grads(module, normed, grad_out, _trailing_dims(inp, len(shape)))


if hasattr(nn, "RMSNorm"):

    @register_rule(nn.RMSNorm)
    class RMSNormRule(LayerRule):
        example_axis_movable = True

        def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
            shape = tuple(module.normalized_shape)  # type: ignore[arg-type]
            normed = F.rms_norm(inp, shape, None, module.eps)  # type: ignore[arg-type]
            return _affine_grads(module, normed, grad_out, _trailing_dims(inp, len(shape)))


@register_rule(nn.GroupNorm)
class GroupNormRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.GroupNorm)
        normed = F.group_norm(inp, module.num_groups, None, None, module.eps)
        return _affine_grads(module, normed, grad_out, [1])


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNormEvalRule(LayerRule):
    def unsupported_reason(self, module: nn.Module) -> str | None:
        if getattr(module, "running_mean", None) is None:
            return "BatchNorm without running statistics normalises with batch statistics"
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        return _affine_grads(module, running_stats_normalised(module, inp), grad_out, [1])


def running_stats_normalised(module: nn.Module, inp: Tensor) -> Tensor:
    """``x̂ = (x − μ_running) / √(σ²_running + ε)`` per channel (dim 1): eval-mode BatchNorm."""
    assert isinstance(module, nn.modules.batchnorm._BatchNorm)
    assert module.running_mean is not None and module.running_var is not None
    view = [1, -1] + [1] * (inp.dim() - 2)
    mean = module.running_mean.reshape(view).to(inp.dtype)
    std = torch.sqrt(module.running_var.reshape(view).to(inp.dtype) + module.eps)
    return (inp - mean) / std
