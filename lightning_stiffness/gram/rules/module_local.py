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
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_map

from lightning_stiffness.gram.capture import ModuleCall
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad

__all__: list[str] = []  # rules register themselves; nothing here is imported by users

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

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if any(type(p).__name__ == "DTensor" for p in module.parameters()):
            return "module-local gradients rerun the module, which needs whole parameters, not FSDP shards"
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
        first = next(iter(axes))
        n = int(_tensors(arguments[first])[0].shape[axes[first][0]]) // axes[first][1]
        if type(module) not in _NO_VMAP:
            try:
                grads = _vmapped_vjps(module, arguments, axes, backprops, out_axes, names, n)
                return {name: g.detach().reshape(n, -1).to(dtype) for name, g in grads.items()}
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                _NO_VMAP.add(type(module))  # no batching rule (RNN kernels): one vjp per example
        return _looped_vjps(module, arguments, axes, backprops, out_axes, names, n, dtype)


_NO_VMAP: set[type[nn.Module]] = set()


def _vmapped_vjps(
    module: nn.Module,
    arguments: dict[str, Any],
    axes: dict[str, Axis],
    backprops: list[Tensor | None],
    out_axes: list[int],
    names: list[str],
    n: int,
) -> dict[str, Tensor]:
    """All examples' ``J_θᵀ b_n`` at once: ``vmap`` over examples of ``torch.func.vjp`` of the module
    applied to one example (its slice, kept as a batch of one)."""
    params = {name: _param(module, name).detach() for name in names}
    batched = {k: tree_map(lambda t, a=axes[k]: _split_examples(t, a, n), v) for k, v in arguments.items() if k in axes}
    fixed = {k: v for k, v in arguments.items() if k not in axes}
    used = [j for j, b in enumerate(backprops) if b is not None]
    cotangents = tuple(b for b in backprops if b is not None)

    def one(example: dict[str, Any], cot: tuple[Tensor, ...]) -> dict[str, Tensor]:
        own = dict(fixed)
        for k, v in example.items():
            dim, width = axes[k]
            own[k] = tree_map(lambda t, d=dim, w=width: t.unsqueeze(d) if w == 1 else t, v)

        def outputs(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
            leaves = tree_flatten(functional_call(module, p, (), own))[0]
            return tuple(leaves[j] for j in used)

        pull = torch.func.vjp(outputs, params)[1]
        grads: dict[str, Tensor] = pull(
            tuple(c.unsqueeze(out_axes[j]).to(params[names[0]].dtype) for c, j in zip(cot, used))
        )[0]
        return grads

    in_dims = (
        {k: tree_map(lambda _t, a=axes[k]: a[0], v) for k, v in batched.items()},
        tuple(out_axes[j] for j in used),
    )
    # no_grad: torch.func differentiates at its own level regardless, and the result must not keep a
    # graph back to the module's other parameters (functional_call leaves those in place)
    with torch.no_grad(), warnings.catch_warnings():
        # ops without a batching rule (CPU flash attention) run per example inside vmap: slower, still exact
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        return torch.func.vmap(one, in_dims=in_dims)(batched, cotangents)


def _split_examples(t: Any, axis: Axis, n: int) -> Any:
    """``(…, N·w, …)`` → ``(…, N, w, …)`` for ``w > 1``, so ``vmap`` hands each example its ``w`` rows."""
    dim, width = axis
    return t.unflatten(dim, (n, width)) if isinstance(t, Tensor) and width > 1 else t


def _looped_vjps(
    module: nn.Module,
    arguments: dict[str, Any],
    axes: dict[str, Axis],
    backprops: list[Tensor | None],
    out_axes: list[int],
    names: list[str],
    n: int,
    dtype: torch.dtype,
) -> dict[str, PerExampleGrad]:
    """``J_θᵀ b_n`` by one forward and backward of the module per example."""
    params = [_param(module, name) for name in names]
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
