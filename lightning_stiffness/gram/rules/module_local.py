"""Module-local per-example gradients for layers whose parameters enter non-linearly and whose
call is not ``(tensor) -> tensor`` (``nn.MultiheadAttention``, ``nn.RNN/GRU/LSTM``).

The capture pass records the module's arguments ``a`` and the backprop ``b_n = ∂ℓ_n/∂y_n`` of
every output (whole-call capture). Because examples are independent, example ``n``'s share of
the module is the module applied to its own slice ``a_n``, and the chain rule gives

    ``∂ℓ_n/∂θ = J_θ[module(a_n; θ)]ᵀ b_n``,

one vector-Jacobian product of the module alone per example: exact, and far cheaper than a
whole-model per-example loop (which recomputes every other layer too). The result is the dense
``(N, |θ|)`` matrix. Each rule names the example axis of every argument and output — from the
module's own flags (``batch_first``), not guessed — and a call whose shapes do not fit (an
unbatched or packed input) goes to the exact fallback.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from lightning_stiffness.gram.capture import ModuleCall
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad

#: An example axis and how many consecutive entries each example owns there (attention masks
#: of shape ``(N·heads, L, S)`` own ``heads`` rows).
Axis = tuple[int, int]


class ModuleLocalRule(LayerRule):
    whole_call = True

    def example_axes(self, module: nn.Module, arguments: dict[str, Any]) -> dict[str, Axis]:
        """The example axis of each per-example tensor argument (by parameter name)."""
        raise NotImplementedError

    def output_axes(self, module: nn.Module) -> list[int]:
        """The example axis of each output leaf, in ``tree_flatten`` order."""
        raise NotImplementedError

    def argument_problem(self, module: nn.Module, arguments: dict[str, Any]) -> str | None:
        """A module-specific reason the call is not covered (unbatched input, packed sequence)."""
        return None

    def call_problem(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, n: int
    ) -> str | None:
        arguments = _bind(module, args, kwargs)
        problem = self.argument_problem(module, arguments)
        if problem is not None:
            return problem
        for name, (axis, width) in self.example_axes(module, arguments).items():
            for t in _tensors(arguments.get(name)):
                if t.dim() <= axis or t.shape[axis] != n * width:
                    return f"argument {name!r} of shape {tuple(t.shape)} has no example axis {axis} of size {n}"
        for leaf, axis in zip(tree_flatten(output)[0], self.output_axes(module)):
            if isinstance(leaf, Tensor) and (leaf.dim() <= axis or leaf.shape[axis] != n):
                return f"an output of shape {tuple(leaf.shape)} has no example axis {axis} of size {n}"
        return None

    def call_grads(
        self, module: nn.Module, call: ModuleCall, grad_z: Tensor, dtype: torch.dtype
    ) -> dict[str, PerExampleGrad]:
        arguments = _bind(module, call.args, call.kwargs)
        axes = self.example_axes(module, arguments)
        out_axes = self.output_axes(module)
        backprops = call.grad_outputs(grad_z)
        names = [name for name in self.parameter_names if isinstance(_param(module, name), nn.Parameter)]
        params = [_param(module, name) for name in names]
        n = int(call.inp.shape[axes[next(iter(axes))][0]]) // axes[next(iter(axes))][1]
        rows: list[list[Tensor]] = []
        for i in range(n):
            own = {k: _example(v, axes.get(k), i) for k, v in arguments.items()}
            with torch.enable_grad():
                leaves = tree_flatten(module(**own))[0]
            pairs = [
                (leaf, _example(b, (axis, 1), i).to(leaf.dtype))
                for leaf, b, axis in zip(leaves, backprops, out_axes)
                if b is not None and isinstance(leaf, Tensor) and leaf.requires_grad
            ]
            grads = torch.autograd.grad([p for p, _ in pairs], params, [b for _, b in pairs], allow_unused=True)
            rows.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])
        return {name: torch.stack([r[j] for r in rows]).reshape(n, -1).to(dtype) for j, name in enumerate(names)}


def _bind(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    return dict(bound.arguments)


def _param(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _tensors(value: Any) -> list[Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, Tensor)]


def _example(value: Any, axis: Axis | None, i: int) -> Any:
    """Example ``i``'s slice of every tensor in ``value`` along ``axis`` (kept, size ``width``)."""
    if axis is None:
        return value
    dim, width = axis
    return tree_map(lambda t: t.narrow(dim, i * width, width) if isinstance(t, Tensor) else t, value)
