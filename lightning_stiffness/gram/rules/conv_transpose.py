"""``nn.ConvTranspose1d/2d/3d``: stride, padding, output padding, dilation, groups.

A transposed convolution is the adjoint of the convolution ``Conv(·; W)`` with the same
geometry that maps its output shape back to its input shape: ``⟨Conv(b; W), x⟩ = ⟨b, ConvT(x; W)⟩``.
So ``dℓ_n = ⟨b_n, ConvT(x_n; dW)⟩ = ⟨Conv(b_n; dW), x_n⟩`` and, with ``p_nt`` the patch of the
backprop ``b_n`` that the convolution reads for input position ``t``,
``∂ℓ_n/∂W_g = Σ_t x_ntg ⊗ p_ntg`` (rows: input channels, columns: output channels × kernel) and
``∂ℓ_n/∂c = Σ_t b_nt`` over the output positions. Output padding only adds positions the
convolution never reads back, so it needs no special case.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule
from lightning_stiffness.gram.rules.conv import unfold_patches

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


@register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        n, groups, c_in = inp.shape[0], module.groups, inp.shape[1]
        patches = unfold_patches(grad_out, module)  # (N, T_in, C_out·K), T_in = input positions
        positions = patches.shape[1]
        if positions != inp[0, 0].numel():
            raise RuntimeError(f"ConvTranspose rule: {positions} patches for {inp[0, 0].numel()} input positions")
        right = patches.reshape(n, positions, groups, -1)
        left = inp.reshape(n, c_in, -1).transpose(1, 2).reshape(n, positions, groups, c_in // groups)
        grads: dict[str, PerExampleGrad] = {"weight": [KroneckerTerm(DenseFactor(left), DenseFactor(right))]}
        if module.bias is not None:
            grads["bias"] = grad_out.reshape(n, grad_out.shape[1], -1).sum(dim=2)
        return grads
