"""``nn.MultiheadAttention``: packed ``in_proj_weight``/``in_proj_bias`` (or separate
``q/k/v_proj_weight``), ``bias_k``/``bias_v`` and ``out_proj``, all applied inside
``F.multi_head_attention_forward`` (``out_proj`` is never called as a module, so this rule claims
its parameters). Module-local per-example vector-Jacobian products
(:mod:`~lightning_stiffness.gram.rules.module_local`).

Example axes: ``query``/``key``/``value`` and the attention output on dim 0 when
``batch_first``, else dim 1; ``key_padding_mask`` and the attention weights on dim 0; a 3-D
``attn_mask`` owns ``num_heads`` consecutive rows per example; a 2-D one is shared.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import register_rule
from lightning_stiffness.gram.rules.module_local import Axis, ModuleLocalRule

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


@register_rule(nn.MultiheadAttention)
class MultiheadAttentionRule(ModuleLocalRule):
    parameter_names = (
        "in_proj_weight",
        "in_proj_bias",
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "bias_k",
        "bias_v",
        "out_proj.weight",
        "out_proj.bias",
    )

    def argument_problem(self, module: nn.Module, arguments: dict[str, Any]) -> str | None:
        query = arguments.get("query")
        if not isinstance(query, Tensor) or query.dim() != 3:
            return "unbatched (2-D) attention input"
        return None

    def example_axes(self, module: nn.Module, arguments: dict[str, Any]) -> dict[str, Axis]:
        assert isinstance(module, nn.MultiheadAttention)
        batch = 0 if module.batch_first else 1
        axes: dict[str, Axis] = {"query": (batch, 1), "key": (batch, 1), "value": (batch, 1)}
        if isinstance(arguments.get("key_padding_mask"), Tensor):
            axes["key_padding_mask"] = (0, 1)
        mask = arguments.get("attn_mask")
        if isinstance(mask, Tensor) and mask.dim() == 3:
            axes["attn_mask"] = (0, module.num_heads)
        return axes

    def output_axes(self, module: nn.Module) -> list[int]:
        assert isinstance(module, nn.MultiheadAttention)
        return [0 if module.batch_first else 1, 0]
