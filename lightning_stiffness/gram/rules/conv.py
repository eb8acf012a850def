"""``nn.Conv1d/2d/3d``: stride, padding (all modes, ``"same"``), dilation, groups, depthwise.

The input is unfolded into patches ``a_nt ∈ R^{C_in/G · k}`` at every output position ``t``;
then each group is a Linear layer over positions: ``∂ℓ_n/∂W_g = Σ_t b_ntg ⊗ a_ntg`` and
``∂ℓ_n/∂c = Σ_t b_nt``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule


def unfold_patches(x: Tensor, conv: nn.modules.conv._ConvNd) -> Tensor:
    """Patches of ``x`` as ``(N, T, C_in·k_1·…·k_d)``, in the layout of ``weight.flatten(1)``."""
    spatial = x.dim() - 2
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    pad = list(conv._reversed_padding_repeated_twice)
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    if spatial == 2:  # im2col kernel; the transpose is a view, not a copy
        return F.unfold(x, kernel, dilation=dilation, stride=stride).transpose(1, 2)
    for dim in range(spatial):
        window = dilation[dim] * (kernel[dim] - 1) + 1
        x = x.unfold(2 + dim, window, stride[dim])
    # (N, C, o_1..o_d, w_1..w_d): keep every dilation-th element of each window
    index: tuple[Any, ...] = (Ellipsis, *[slice(None, None, d) for d in dilation])
    x = x[index]
    n, c = x.shape[:2]
    out_dims = list(range(2, 2 + spatial))
    k_dims = list(range(2 + spatial, 2 + 2 * spatial))
    x = x.permute(0, *out_dims, 1, *k_dims)
    return x.reshape(n, -1, c * _prod(kernel))


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


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
