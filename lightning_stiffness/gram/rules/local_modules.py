"""Module-local rules for third-party layers whose own parameters enter non-linearly or through
indexing, which neither a Kronecker rule nor the raw-parameter capture can follow:

* timm ``beit.Attention`` / ``eva.EvaAttention``: ``q_bias``/``v_bias`` concatenated into the qkv
  bias of an ``F.linear`` on ``qkv.weight``; BEiT's ``relative_position_bias_table`` (indexed);
* timm ``RelPosBias`` (CoAtNet, MaxViT) and torchvision MaxViT's
  ``RelativePositionalMultiHeadAttention``: ``relative_position_bias_table`` (indexed);
* timm ``StdConv2d``/``StdConv2dSame`` (BiT ResNetV2) and ``ScaledStdConv2d(Same)`` (NFNets): the
  weight is standardised per output channel before the convolution.

Each takes per-example VJPs of the module alone (:mod:`~lightning_stiffness.gram.rules.module_local`)
with the example on dim 0 of the named ``example_args`` and of every output; ``shared_args``
(rotary tables, shared position biases) are passed whole; any other tensor argument sends the call
to the exact fallback. Registered once the library has been imported.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_stiffness.gram.rules.base import register_rule, register_when_imported
from lightning_stiffness.gram.rules.module_local import Axis, ModuleLocalRule, _tensors

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


class LeadingAxisLocalRule(ModuleLocalRule):
    example_args: tuple[str, ...] = ("x",)
    shared_args: tuple[str, ...] = ()

    def argument_problem(self, module: nn.Module, arguments: dict[str, Any]) -> str | None:
        if not any(_tensors(arguments.get(k)) for k in self.example_args):
            return f"none of its per-example arguments {self.example_args} is a tensor"
        for name, value in arguments.items():
            if name not in self.example_args and name not in self.shared_args and _tensors(value):
                return f"its tensor argument {name!r} is neither per-example nor shared as far as the rule knows"
        return None

    def example_axes(self, module: nn.Module, arguments: dict[str, Any]) -> dict[str, Axis]:
        return {k: (0, 1) for k in self.example_args if _tensors(arguments.get(k))}

    def output_axes(self, module: nn.Module) -> list[int]:
        return [0] * 64  # every output leaf carries the example on dim 0


def local_rule(
    *types: type[nn.Module], params: tuple[str, ...], example: tuple[str, ...], shared: tuple[str, ...] = ()
) -> None:
    """Register a :class:`LeadingAxisLocalRule` for ``types`` covering ``params``."""
    attrs = {"parameter_names": params, "example_args": example, "shared_args": shared}
    register_rule(*types)(type(f"{types[0].__name__}LocalRule", (LeadingAxisLocalRule,), attrs))


def _register_timm() -> None:
    from timm.layers import pos_embed_rel, std_conv
    from timm.models import beit, eva

    bias = ("q_bias", "v_bias", "qkv.weight", "qkv.bias")
    local_rule(
        beit.Attention, params=(*bias, "relative_position_bias_table"), example=("x",), shared=("shared_rel_pos_bias",)
    )
    local_rule(eva.EvaAttention, params=bias, example=("x", "attn_mask"), shared=("rope",))
    local_rule(
        pos_embed_rel.RelPosBias,
        params=("relative_position_bias_table",),
        example=("attn",),
        shared=("shared_rel_pos",),
    )
    local_rule(std_conv.StdConv2d, std_conv.StdConv2dSame, params=("weight", "bias"), example=("x",))
    local_rule(
        std_conv.ScaledStdConv2d, std_conv.ScaledStdConv2dSame, params=("weight", "bias", "gain"), example=("x",)
    )


def _register_torchvision_maxvit() -> None:
    from torchvision.models import maxvit

    local_rule(maxvit.RelativePositionalMultiHeadAttention, params=("relative_position_bias_table",), example=("x",))


register_when_imported("timm", _register_timm)
register_when_imported("torchvision.models.maxvit", _register_torchvision_maxvit)
