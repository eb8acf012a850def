"""``nn.Embedding``: ``y_nt = W[i_nt]``.

``∂ℓ_n/∂W = Σ_t e_{i_nt} ⊗ b_nt`` (one-hot rows), so the kernel is a token-equality mask:
``⟨g_n, g_m⟩ = Σ_{t,s} [i_nt = i_ms] (b_nt · b_ms)``; positions holding ``padding_idx`` get
no gradient, as in PyTorch.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, IndexFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__ = ["EmbeddingRule"]


@register_rule(nn.Embedding)
class EmbeddingRule(LayerRule):
    example_axis_movable = True

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if getattr(module, "scale_grad_by_freq", False):
            return "scale_grad_by_freq scales gradients by token counts of the whole batch"
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.Embedding)
        n = grad_out.shape[0]
        indices = inp.expand(n, *inp.shape[1:]).reshape(n, -1)
        b = grad_out.reshape(n, indices.shape[1], 1, grad_out.shape[-1])
        if module.padding_idx is not None:
            b = b.masked_fill((indices == module.padding_idx)[:, :, None, None], 0.0)
        left = IndexFactor(indices, module.num_embeddings)
        return {"weight": [KroneckerTerm(left, DenseFactor(b))]}
