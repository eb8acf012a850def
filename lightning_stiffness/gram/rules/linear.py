"""``nn.Linear`` with any number of leading dimensions: ``y_nt = W a_nt + c``.

``∂ℓ_n/∂W = Σ_t b_nt ⊗ a_nt`` with ``b = ∂ℓ/∂y``; ``∂ℓ_n/∂c = Σ_t b_nt``.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__ = ["LinearRule"]


@register_rule(nn.Linear)
class LinearRule(LayerRule):
    example_axis_movable = True

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        n = inp.shape[0]
        a = inp.reshape(n, -1, 1, inp.shape[-1])
        b = grad_out.reshape(n, -1, 1, grad_out.shape[-1])
        grads: dict[str, PerExampleGrad] = {"weight": [KroneckerTerm(DenseFactor(b), DenseFactor(a))]}
        if getattr(module, "bias", None) is not None:
            grads["bias"] = b.sum(dim=(1, 2))
        return grads
