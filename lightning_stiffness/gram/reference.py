"""Jacobian-row methods: the per-example ``loop`` (the reference) and ``vmap`` (torch.func).

Both produce rows of ``J`` (``N × P``, one flattened per-example gradient per row) for a
chosen set of parameters, tile by tile; :func:`~lightning_stiffness.gram.tiling.add_row_gram`
turns them into ``J Jᵀ`` within a memory budget. The kernel engine also uses them as its
exact fallback for parameters no layer rule covers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_stiffness.gram.inputs import ExampleBatch, LossFn, call_model, hf_vmap_mask_checks, per_example_losses

__all__: list[str] = []  # internal to the package: no public names

RowFn = Callable[[int, int], Tensor]


def loop_rows(model: nn.Module, params: dict[str, nn.Parameter], batch: ExampleBatch, loss_fn: LossFn | None) -> RowFn:
    """Rows of ``J`` from one forward/backward per example (plain autograd)."""
    names = list(params)
    tensors = [params[k] for k in names]

    def rows(start: int, stop: int) -> Tensor:
        out = []
        for i in range(start, stop):
            one = batch.rows(i, i + 1)
            loss = per_example_losses(loss_fn, call_model(model, one.inputs), one.targets, 1).sum()
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            out.append(torch.cat([_flat(g, p) for g, p in zip(grads, tensors)]))
        return torch.stack(out)

    return rows


def vmap_rows(model: nn.Module, params: dict[str, nn.Parameter], batch: ExampleBatch, loss_fn: LossFn | None) -> RowFn:
    """Rows of ``J`` from ``vmap(grad(functional_call))``, the torch.func per-sample recipe.

    Parameters outside ``params`` stay fixed at the module's own values.
    """
    in_dims = batch.in_dims()
    # functional_call needs the module's own names, which may hold wrapper segments that params' names lack
    own_name = {id(p): k for k, p in model.named_parameters()}
    detached = {own_name[id(p)]: p.detach() for p in params.values()}
    names = list(detached)

    def loss_one(p: dict[str, Tensor], inputs: Any, target: Tensor) -> Tensor:
        inputs = _add_batch_dim(inputs, in_dims)
        if isinstance(inputs, Mapping):
            outputs = functional_call(model, p, args=(), kwargs=dict(inputs))
        elif isinstance(inputs, (tuple, list)):
            outputs = functional_call(model, p, args=tuple(inputs))
        else:
            outputs = functional_call(model, p, args=(inputs,))
        return per_example_losses(loss_fn, outputs, target.unsqueeze(0), 1).sum()

    def flat_grad(p: dict[str, Tensor], inputs: Any, target: Tensor) -> Tensor:
        g = grad(loss_one)(p, inputs, target)
        return torch.cat([g[k].reshape(-1) for k in names])

    batched = vmap(flat_grad, in_dims=(None, in_dims, 0))

    def rows(start: int, stop: int) -> Tensor:
        part = batch.rows(start, stop)
        # torch.func.grad ignores an outer no_grad; it keeps the result detached from the
        # unselected parameters, which functional_call leaves in the graph
        with torch.no_grad(), hf_vmap_mask_checks(model):
            return batched(detached, part.inputs, part.targets)

    return rows


def _flat(g: Tensor | None, p: Tensor) -> Tensor:
    return (g if g is not None else torch.zeros_like(p)).reshape(-1)


def _add_batch_dim(obj: Any, dims: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.unsqueeze(0) if dims == 0 else obj
    if isinstance(obj, Mapping):
        return {k: _add_batch_dim(v, dims[k]) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_add_batch_dim(v, d) for v, d in zip(obj, dims))
    return obj
