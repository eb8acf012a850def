"""RMSNorm classes of Hugging Face decoders and T5: ``y = w ⊙ x̂`` or ``y = (1 + w) ⊙ x̂``.

Both normalise each position over the last dimension, ``x̂ = x / sqrt(mean(x²) + ε)``, and scale
it; only ``w`` is a parameter, so either way ``∂ℓ_n/∂w = Σ_t b_nt ⊙ x̂_nt`` with ``b = ∂ℓ/∂y``
(one value per feature, materialised). Each family defines its own class, so every class whose
``forward`` was checked to compute exactly this is listed by name (``transformers`` is not
imported); subclasses that override ``forward`` are not covered (see ``find_rule``). Because a
name says nothing about the installed version's code, each module is also checked once per call
on a probe input: ``y(w + δ) − y(w) = δ ⊙ x̂`` must hold, or the parameter goes to the exact fallback.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule_by_name
from lightning_stiffness.gram.rules.probe import forward_without_hooks, matches

__all__ = ["HFRMSNormRule"]

#: ``y = w ⊙ x̂`` with ``ε`` in ``variance_epsilon`` (the Llama form and T5's ``T5LayerNorm``).
SCALE_CLASSES = (
    "transformers.models.llama.modeling_llama.LlamaRMSNorm",
    "transformers.models.mistral.modeling_mistral.MistralRMSNorm",
    "transformers.models.mixtral.modeling_mixtral.MixtralRMSNorm",
    "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm",
    "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeRMSNorm",
    "transformers.models.qwen3.modeling_qwen3.Qwen3RMSNorm",
    "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeRMSNorm",
    "transformers.models.phi3.modeling_phi3.Phi3RMSNorm",
    "transformers.models.granite.modeling_granite.GraniteRMSNorm",
    "transformers.models.smollm3.modeling_smollm3.SmolLM3RMSNorm",
    "transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3RMSNorm",
    "transformers.models.olmo2.modeling_olmo2.Olmo2RMSNorm",
    "transformers.models.olmo3.modeling_olmo3.Olmo3RMSNorm",
    "transformers.models.olmoe.modeling_olmoe.OlmoeRMSNorm",
    "transformers.models.ministral.modeling_ministral.MinistralRMSNorm",
    "transformers.models.glm.modeling_glm.GlmRMSNorm",
    "transformers.models.glm4.modeling_glm4.Glm4RMSNorm",
    "transformers.models.granitemoe.modeling_granitemoe.GraniteMoeRMSNorm",
    "transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2RMSNorm",
    "transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLRMSNorm",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLRMSNorm",
    "transformers.models.helium.modeling_helium.HeliumRMSNorm",
    "transformers.models.t5.modeling_t5.T5LayerNorm",
    "transformers.models.mt5.modeling_mt5.MT5LayerNorm",
    "transformers.models.umt5.modeling_umt5.UMT5LayerNorm",
)
#: ``y = (1 + w) ⊙ x̂`` with ``ε`` in ``eps`` (Gemma, T5Gemma, Qwen3-Next).
OFFSET_SCALE_CLASSES = (
    "transformers.models.gemma.modeling_gemma.GemmaRMSNorm",
    "transformers.models.gemma2.modeling_gemma2.Gemma2RMSNorm",
    "transformers.models.gemma3.modeling_gemma3.Gemma3RMSNorm",
    "transformers.models.t5gemma.modeling_t5gemma.T5GemmaRMSNorm",
    "transformers.models.qwen3_next.modeling_qwen3_next.Qwen3NextRMSNorm",
)


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """``x̂ = x / sqrt(mean(x², last dim) + ε)``."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def _epsilon(module: nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _scales_by_normalized_input(module: nn.Module, weight: Tensor, eps: float) -> bool:
    """Probe the forward: ``y(w + δ) − y(w) = δ ⊙ x̂``, i.e. ``∂y/∂w = x̂`` (``y`` affine in ``w``)."""
    width = weight.shape[0]
    x = torch.linspace(-2.0, 3.0, 2 * width, dtype=weight.dtype, device=weight.device).reshape(2, width)
    delta = torch.linspace(0.5, 1.5, width, dtype=weight.dtype, device=weight.device)
    y0 = forward_without_hooks(module, x, {"weight": weight.detach()})
    y1 = forward_without_hooks(module, x, {"weight": weight.detach() + delta})
    if y0 is None or y1 is None:
        return False
    return matches(y1 - y0, delta * rms_normalize(x.float(), eps).to(weight.dtype))


@register_rule_by_name(*SCALE_CLASSES, *OFFSET_SCALE_CLASSES)
class HFRMSNormRule(LayerRule):
    parameter_names = ("weight",)

    def unsupported_reason(self, module: nn.Module) -> str | None:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 1:
            return "RMSNorm without a 1-D weight"
        eps = _epsilon(module)
        if eps is None:
            return "RMSNorm without a numeric epsilon (variance_epsilon / eps)"
        if not _scales_by_normalized_input(module, weight, eps):
            return f"{type(module).__name__}.forward does not compute (1 +) w ⊙ x / sqrt(mean(x²) + ε) here"
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        eps = _epsilon(module)
        assert eps is not None
        n, width = grad_out.shape[0], grad_out.shape[-1]
        prod = grad_out * rms_normalize(inp, eps)
        return {"weight": prod.reshape(n, -1, width).sum(dim=1)}
