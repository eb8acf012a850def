"""``nn.Conv1d/2d/3d``: stride, padding (all modes, ``"same"``), dilation, groups, depthwise.

The input is unfolded into patches ``a_nt ∈ R^{C_in/G · k}`` at every output position ``t``;
then each group is a Linear layer over positions: ``∂ℓ_n/∂W_g = Σ_t b_ntg ⊗ a_ntg`` and
``∂ℓ_n/∂c = Σ_t b_nt``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__ = ["ConvRule"]


def unfold_patches(x: Tensor, conv: nn.modules.conv._ConvNd) -> Tensor:
    """Patches of ``x`` as ``(N, T, C_in·k_1·…·k_d)``, in the layout of ``weight.flatten(1)``.

    After padding, patch element ``(c, j_1..j_d)`` at output position ``(o_1..o_d)`` is
    ``x[c, o_1·s_1 + j_1·δ_1, …]`` (stride ``s``, dilation ``δ``): one strided view of the padded
    input, copied once into ``(N, C_in·k, T)``. For any number of spatial dimensions, and on the
    CPU faster than ``F.unfold``'s im2col kernel (docs/performance.md).
    """
    spatial = x.dim() - 2
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    pad = list(conv._reversed_padding_repeated_twice)
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    n, channels, *size = x.shape
    out = [(size[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(spatial)]
    strides = x.stride()
    window = x.as_strided(
        (n, channels, *kernel, *out),
        (
            strides[0],
            strides[1],
            *[dilation[d] * strides[2 + d] for d in range(spatial)],
            *[stride[d] * strides[2 + d] for d in range(spatial)],
        ),
    )
    return window.reshape(n, channels * math.prod(kernel), math.prod(out)).transpose(1, 2)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.modules.conv._ConvNd)
        n, groups = inp.shape[0], module.groups
        patches = unfold_patches(inp, module)  # (N, T, C_in·K)
        positions = patches.shape[1]
        a = patches.reshape(n, positions, groups, -1)
        c_out = grad_out.shape[1]
        b = grad_out.reshape(n, c_out, -1).transpose(1, 2).reshape(n, positions, groups, c_out // groups)
        grads: dict[str, PerExampleGrad] = {"weight": [KroneckerTerm(DenseFactor(b), DenseFactor(a))]}
        if module.bias is not None:
            grads["bias"] = grad_out.reshape(n, c_out, -1).sum(dim=2)
        return grads
