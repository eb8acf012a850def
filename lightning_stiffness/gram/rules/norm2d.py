"""Channel LayerNorm of NCHW tensors: timm's and torchvision's ``LayerNorm2d``.

``y = permute(LayerNorm_C(permute(x)))`` normalises each pixel over its ``C`` channels; with
``x̂`` that normalisation, ``∂ℓ_n/∂γ = Σ_pixels b_n ⊙ x̂_n`` and ``∂ℓ_n/∂β = Σ_pixels b_n`` (dense).
Registered only once timm or torchvision has been imported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule, register_when_imported
from lightning_stiffness.gram.rules.norm import _affine_grads


def channel_layer_norm(module: nn.LayerNorm, x: Tensor) -> Tensor:
    """``x̂``: ``x`` normalised over dim 1 (no affine), same layout as ``x``."""
    if x.dim() != 4:
        raise RuntimeError(f"{type(module).__name__} rule: expected an NCHW input, got shape {tuple(x.shape)}")
    return F.layer_norm(x.permute(0, 2, 3, 1), tuple(module.normalized_shape), None, None, module.eps).permute(
        0, 3, 1, 2
    )


class LayerNorm2dRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.LayerNorm)
        return _affine_grads(module, channel_layer_norm(module, inp), grad_out, [1])


def _register_timm() -> None:
    from timm.layers import norm

    register_rule(norm.LayerNorm2d)(LayerNorm2dRule)


def _register_torchvision() -> None:
    from torchvision.models import convnext

    register_rule(convnext.LayerNorm2d)(LayerNorm2dRule)


register_when_imported("timm", _register_timm)
register_when_imported("torchvision", _register_torchvision)
