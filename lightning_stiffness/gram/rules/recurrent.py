"""``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` (any layers, directions, ``proj_size``): module-local
per-example vector-Jacobian products (:mod:`~lightning_stiffness.gram.rules.module_local`), so
the recurrence is differentiated by the module's own kernel once per example instead of the
whole model going to the per-example loop (``vmap`` has no batching rule for these kernels).

Example axes: the input and the output sequence on dim 0 when ``batch_first``, else dim 1; the
initial and final states ``(layers·directions, N, H)`` always on dim 1. Packed sequences and
unbatched (2-D) inputs, and stacks deeper than 16 layers, go to the exact fallback.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import register_rule
from lightning_stiffness.gram.rules.module_local import Axis, ModuleLocalRule

__all__: list[str] = []  # rules register themselves; nothing here is imported by users

MAX_LAYERS = 16


@register_rule(nn.RNN, nn.GRU, nn.LSTM)
class RecurrentRule(ModuleLocalRule):
    #: ``weight_ih_l{k}``, ``bias_hh_l{k}_reverse``, ``weight_hr_l{k}`` … for up to 16 layers
    parameter_names = tuple(
        f"{kind}_l{layer}{suffix}"
        for layer in range(MAX_LAYERS)
        for suffix in ("", "_reverse")
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    )

    def argument_problem(self, module: nn.Module, arguments: dict[str, Any]) -> str | None:
        inp = arguments.get("input")
        if not isinstance(inp, Tensor):
            return "packed sequence input (its batch is not a tensor axis)"
        if inp.dim() != 3:
            return "unbatched (2-D) sequence input"
        return None

    def example_axes(self, module: nn.Module, arguments: dict[str, Any]) -> dict[str, Axis]:
        assert isinstance(module, nn.RNNBase)
        axes: dict[str, Axis] = {"input": (0 if module.batch_first else 1, 1)}
        if arguments.get("hx") is not None:
            axes["hx"] = (1, 1)
        return axes

    def output_axes(self, module: nn.Module) -> list[int]:
        assert isinstance(module, nn.RNNBase)
        return [0 if module.batch_first else 1, 1, 1]
