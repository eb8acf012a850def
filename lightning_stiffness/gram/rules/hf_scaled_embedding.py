"""Scaled word embeddings of Hugging Face models (Gemma, BART and kin): ``y_nt = s · W[i_nt]``.

The embedding rule with the backprop scaled by the constant ``s`` (``embed_scale``, e.g.
``sqrt(d_model)``): ``∂ℓ_n/∂W = s Σ_t e_{i_nt} ⊗ b_nt``; positions holding ``padding_idx`` get no
gradient, as in ``nn.Embedding``. Registered by name (``transformers`` is not imported); each
module's forward is checked once per call on probe ids to compute ``s · W[i]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import PerExampleGrad, register_rule_by_name
from lightning_stiffness.gram.rules.embedding import EmbeddingRule
from lightning_stiffness.gram.rules.probe import forward_without_hooks, matches

__all__ = ["HFScaledEmbeddingRule"]

SCALED_EMBEDDING_CLASSES = (
    "transformers.models.bart.modeling_bart.BartScaledWordEmbedding",
    "transformers.models.mbart.modeling_mbart.MBartScaledWordEmbedding",
    "transformers.models.plbart.modeling_plbart.PLBartScaledWordEmbedding",
    "transformers.models.blenderbot.modeling_blenderbot.BlenderbotScaledWordEmbedding",
    "transformers.models.m2m_100.modeling_m2m_100.M2M100ScaledWordEmbedding",
    "transformers.models.biogpt.modeling_biogpt.BioGptScaledWordEmbedding",
    "transformers.models.xglm.modeling_xglm.XGLMScaledWordEmbedding",
    "transformers.models.gemma.modeling_gemma.GemmaTextScaledWordEmbedding",
    "transformers.models.gemma2.modeling_gemma2.Gemma2TextScaledWordEmbedding",
    "transformers.models.gemma3.modeling_gemma3.Gemma3TextScaledWordEmbedding",
    "transformers.models.vaultgemma.modeling_vaultgemma.VaultGemmaTextScaledWordEmbedding",
)


def embed_scale(module: nn.Module) -> float | None:
    """The constant ``s`` (a number or a one-element tensor), ``None`` when there is none."""
    scale = getattr(module, "embed_scale", None)
    if isinstance(scale, Tensor) and scale.numel() == 1:
        return float(scale)
    if isinstance(scale, (int, float)):
        return float(scale)
    return None


def _computes_scaled_lookup(module: nn.Embedding, scale: float) -> bool:
    """Probe the forward: ``y = s · W[i]`` on a few ids (the padding row included when there is one)."""
    ids = torch.arange(min(module.num_embeddings, 8), device=module.weight.device)[None]
    with torch.no_grad():
        expected = F.embedding(ids, module.weight) * scale
    return matches(forward_without_hooks(module, ids), expected)


@register_rule_by_name(*SCALED_EMBEDDING_CLASSES)
class HFScaledEmbeddingRule(EmbeddingRule):
    def unsupported_reason(self, module: nn.Module) -> str | None:
        reason = super().unsupported_reason(module)
        if reason is not None:
            return reason
        scale = embed_scale(module)
        if scale is None or not isinstance(module, nn.Embedding):
            return "scaled embedding without a scalar embed_scale"
        if not _computes_scaled_lookup(module, scale):
            return f"{type(module).__name__}.forward does not compute embed_scale * weight[ids] here"
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        scale = embed_scale(module)
        assert scale is not None
        return super().per_example_grads(module, inp, grad_out * scale)
