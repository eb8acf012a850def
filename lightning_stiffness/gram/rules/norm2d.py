"""Channel LayerNorm of NCHW tensors: timm's and torchvision's ``LayerNorm2d``, and Hugging Face's
``ConvNextLayerNorm``/``ConvNextV2LayerNorm`` (``data_format="channels_first"``; with
``"channels_last"`` they are a plain LayerNorm).

``y = permute(LayerNorm_C(permute(x)))`` normalises each pixel over its ``C`` channels; with
``x̂`` that normalisation, ``∂ℓ_n/∂γ = Σ_pixels b_n ⊙ x̂_n`` and ``∂ℓ_n/∂β = Σ_pixels b_n`` (dense).
Each is registered only once its library module has been imported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule, register_when_imported
from lightning_stiffness.gram.rules.norm import LayerNormRule, _affine_grads

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


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


class DataFormatLayerNormRule(LayerRule):
    """Hugging Face ConvNeXt: channel LayerNorm or plain LayerNorm by ``data_format``."""

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        if getattr(module, "data_format", None) == "channels_first":
            return LayerNorm2dRule().per_example_grads(module, inp, grad_out)
        return LayerNormRule().per_example_grads(module, inp, grad_out)


def _register_timm() -> None:
    from timm.layers import norm

    register_rule(norm.LayerNorm2d)(LayerNorm2dRule)


def _register_torchvision() -> None:
    from torchvision.models import convnext

    register_rule(convnext.LayerNorm2d)(LayerNorm2dRule)


def _register_hf_convnext() -> None:
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm

    register_rule(ConvNextLayerNorm)(DataFormatLayerNormRule)


def _register_hf_convnextv2() -> None:
    from transformers.models.convnextv2.modeling_convnextv2 import ConvNextV2LayerNorm

    register_rule(ConvNextV2LayerNorm)(DataFormatLayerNormRule)


register_when_imported("timm", _register_timm)
register_when_imported("torchvision.models.convnext", _register_torchvision)
register_when_imported("transformers.models.convnext.modeling_convnext", _register_hf_convnext)
register_when_imported("transformers.models.convnextv2.modeling_convnextv2", _register_hf_convnextv2)
