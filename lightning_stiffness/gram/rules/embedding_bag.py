"""``nn.EmbeddingBag`` with 2-D input (one bag of ``L`` indices per example), ``mode="sum"`` or
``"mean"``, optional ``per_sample_weights``: ``y_n = s_n Σ_j w_nj W[i_nj]``.

``∂ℓ_n/∂W = Σ_j e_{i_nj} ⊗ (s_n w_nj b_n)`` — the Embedding rule's one-hot Kronecker form with the
bag's backprop ``b_n`` repeated at every index, weighted by ``w_nj`` (1 without weights) and by
``s_n = 1`` (sum) or ``1 / #non-padding indices`` (mean); ``padding_idx`` entries get nothing.
Whole-call capture, so ``per_sample_weights`` given by keyword are seen. ``mode="max"``, 1-D
input with ``offsets`` and ``scale_grad_by_freq`` go to the exact fallback.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.capture import ModuleCall
from lightning_stiffness.gram.factors import DenseFactor, IndexFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    names = ("input", "offsets", "per_sample_weights")
    values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    return values.get("input"), values.get("offsets"), values.get("per_sample_weights")


@register_rule(nn.EmbeddingBag)
class EmbeddingBagRule(LayerRule):
    parameter_names = ("weight",)
    whole_call = True

    def unsupported_reason(self, module: nn.Module) -> str | None:
        assert isinstance(module, nn.EmbeddingBag)
        if module.mode == "max":
            return "mode='max' sends each feature's gradient to a different index"
        if module.scale_grad_by_freq:
            return "scale_grad_by_freq scales gradients by token counts of the whole batch"
        return None

    def call_problem(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, n: int
    ) -> str | None:
        inp, offsets, _ = _arguments(args, kwargs)
        if not isinstance(inp, Tensor) or inp.dim() != 2 or offsets is not None or inp.shape[0] != n:
            return f"only 2-D input with one bag per example (N={n}) is covered, not 1-D input with offsets"
        return None

    def call_grads(
        self, module: nn.Module, call: ModuleCall, grad_z: Tensor, dtype: torch.dtype
    ) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.EmbeddingBag)
        indices, _, weights = _arguments(call.args, call.kwargs)
        (b,) = (g for g in call.grad_outputs(grad_z) if g is not None)
        n, length = indices.shape
        keep = torch.ones_like(indices, dtype=dtype)
        if module.padding_idx is not None:
            keep = keep.masked_fill(indices == module.padding_idx, 0.0)
        scale = keep if weights is None else keep * weights.to(dtype)
        if module.mode == "mean":
            scale = scale / keep.sum(dim=1, keepdim=True).clamp(min=1.0)
        right = scale[:, :, None] * b.to(dtype)[:, None, :]  # (N, L, D)
        term = KroneckerTerm(IndexFactor(indices, module.num_embeddings), DenseFactor(right.reshape(n, length, 1, -1)))
        return {"weight": [term]}
