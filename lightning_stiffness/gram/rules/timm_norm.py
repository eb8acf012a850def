"""timm's norm layers that override ``forward`` (fast-norm switch, fused activation).

* ``LayerNorm``, ``GroupNorm``, ``GroupNorm1``: the plain PyTorch maths, so the LayerNorm and
  GroupNorm rules apply unchanged.
* ``BatchNormAct2d`` (eval: running statistics), ``GroupNormAct``, ``GroupNorm1Act``,
  ``LayerNormAct``, ``LayerNormAct2d``: ``y = act(drop(γ ⊙ x̂ + β))``; the rules take the backprop
  at the pre-activation (:mod:`~lightning_stiffness.gram.rules.norm_act`) and then
  ``∂ℓ_n/∂γ = Σ ∂ℓ_n/∂p ⊙ x̂_n``, ``∂ℓ_n/∂β = Σ ∂ℓ_n/∂p``.

Registered only once timm has been imported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule, register_when_imported
from lightning_stiffness.gram.rules.norm import (
    GroupNormRule,
    LayerNormRule,
    _affine_grads,
    _trailing_dims,
    running_stats_normalised,
)
from lightning_stiffness.gram.rules.norm2d import channel_layer_norm
from lightning_stiffness.gram.rules.norm_act import channel_affine, preactivation_backprop

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


class BatchNormActRule(LayerRule):
    def unsupported_reason(self, module: nn.Module) -> str | None:
        if getattr(module, "running_mean", None) is None:
            return "BatchNorm without running statistics normalises with batch statistics"
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        normed = running_stats_normalised(module, inp)
        grad_pre = preactivation_backprop(module, channel_affine(module, normed), grad_out)
        return _affine_grads(module, normed, grad_pre, [1])


class GroupNormActRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.GroupNorm)
        normed = F.group_norm(inp, module.num_groups, None, None, module.eps)
        grad_pre = preactivation_backprop(module, channel_affine(module, normed), grad_out)
        return _affine_grads(module, normed, grad_pre, [1])


class LayerNormActRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.LayerNorm)
        shape = tuple(module.normalized_shape)
        normed = F.layer_norm(inp, shape, None, None, module.eps)
        pre = normed
        if module.weight is not None:
            pre = pre * module.weight.to(inp.dtype)
        if module.bias is not None:
            pre = pre + module.bias.to(inp.dtype)
        grad_pre = preactivation_backprop(module, pre, grad_out)
        return _affine_grads(module, normed, grad_pre, _trailing_dims(inp, len(shape)))


class LayerNormAct2dRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.LayerNorm)
        normed = channel_layer_norm(module, inp)
        grad_pre = preactivation_backprop(module, channel_affine(module, normed), grad_out)
        return _affine_grads(module, normed, grad_pre, [1])


def _register() -> None:
    from timm.layers import norm, norm_act

    register_rule(norm.LayerNorm)(LayerNormRule)
    register_rule(norm.GroupNorm, norm.GroupNorm1)(GroupNormRule)
    register_rule(norm_act.BatchNormAct2d)(BatchNormActRule)
    register_rule(norm_act.GroupNormAct, norm_act.GroupNorm1Act)(GroupNormActRule)
    register_rule(norm_act.LayerNormAct)(LayerNormActRule)
    register_rule(norm_act.LayerNormAct2d)(LayerNormAct2dRule)


register_when_imported("timm", _register)
