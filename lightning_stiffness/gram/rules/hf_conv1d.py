"""Hugging Face ``Conv1D`` (GPT-2, GPT, …): a Linear layer with a transposed weight.

``y_nt = a_nt W + c`` with ``W ∈ R^{in × out}`` (``torch.addmm(bias, x, weight)``), so
``∂ℓ_n/∂W = Σ_t a_nt ⊗ b_nt`` (input side first, matching ``W``'s layout) and
``∂ℓ_n/∂c = Σ_t b_nt`` with ``b = ∂ℓ/∂y``. Registered by name (``transformers`` is not imported);
each module's forward is checked once per call on a probe input to compute ``x W + c``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule_by_name
from lightning_stiffness.gram.rules.probe import forward_without_hooks, matches

__all__ = ["HFConv1DRule"]


def _computes_x_w_plus_b(module: nn.Module, weight: Tensor) -> bool:
    """Probe the forward on a small input: ``y = x W + c`` (``c = 0`` without a bias)."""
    x = torch.linspace(-1.0, 1.0, 3 * weight.shape[0], dtype=weight.dtype, device=weight.device).reshape(1, 3, -1)
    bias = getattr(module, "bias", None)
    with torch.no_grad():
        expected = x @ weight + (bias if isinstance(bias, Tensor) else 0)
    return matches(forward_without_hooks(module, x), expected)


@register_rule_by_name("transformers.pytorch_utils.Conv1D")
class HFConv1DRule(LayerRule):
    def unsupported_reason(self, module: nn.Module) -> str | None:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            return "Conv1D without a 2-D (in, out) weight"
        if not _computes_x_w_plus_b(module, weight):
            return f"{type(module).__name__}.forward does not compute x @ weight + bias here"
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        n = inp.shape[0]
        a = inp.reshape(n, -1, 1, inp.shape[-1])
        b = grad_out.reshape(n, -1, 1, grad_out.shape[-1])
        grads: dict[str, PerExampleGrad] = {"weight": [KroneckerTerm(DenseFactor(a), DenseFactor(b))]}
        if getattr(module, "bias", None) is not None:
            grads["bias"] = b.sum(dim=(1, 2))
        return grads
