"""Normalisation layers fused with an activation (timm's ``BatchNormAct2d``, ``GroupNormAct``, …).

Such a module computes ``y = act(drop(p))`` with the affine pre-activation ``p = γ ⊙ x̂ + β``, so
its parameters see the backprop at ``p``, not at ``y``: ``∂ℓ_n/∂p = J_act(p_n)ᵀ b_n``. The rules
recompute ``p`` from the recorded input and get that vector-Jacobian product from autograd through
the module's own ``drop`` and ``act`` submodules (identity and the activation in eval mode; exact
for any activation, in place or not), then apply the plain affine-norm formulas to it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


def channel_affine(module: nn.Module, normed: Tensor, channel_dim: int = 1) -> Tensor:
    """``γ ⊙ x̂ + β`` with one ``γ_c, β_c`` per channel on ``channel_dim`` (absent ones: 1 and 0)."""
    view = [1] * normed.dim()
    view[channel_dim] = -1
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    out = normed if weight is None else normed * weight.reshape(view).to(normed.dtype)
    return out if bias is None else out + bias.reshape(view).to(normed.dtype)


def preactivation_backprop(module: nn.Module, pre: Tensor, grad_out: Tensor) -> Tensor:
    """``J_{act∘drop}(pre)ᵀ grad_out``: the backprop at the pre-activation ``pre``."""
    pre = pre.detach().requires_grad_(True)
    act, drop = module.get_submodule("act"), module.get_submodule("drop")
    with torch.enable_grad():
        # clone: an in-place activation must not overwrite the leaf it differentiates
        out = act(drop(pre.clone()))
    (grad,) = torch.autograd.grad(out, pre, grad_out)
    return grad
