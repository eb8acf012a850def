"""``nn.PReLU``: ``y = max(0, x) + a_c · min(0, x)``, one slope ``a`` or one per channel (dim 1).

``∂ℓ_n/∂a_c = Σ b_n ⊙ min(0, x_n)`` over every position of channel ``c`` (all positions for a
single slope); materialised, as it has ``C`` entries at most.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


@register_rule(nn.PReLU)
class PReLURule(LayerRule):
    parameter_names = ("weight",)

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.PReLU)
        n = inp.shape[0]
        prod = grad_out * inp.clamp(max=0)
        if module.num_parameters == 1:
            return {"weight": prod.reshape(n, -1).sum(dim=1, keepdim=True)}
        return {"weight": prod.reshape(n, prod.shape[1], -1).sum(dim=2)}
