"""Layer representations of the probe: the one model forward the measurement makes besides the
Gram's capture, for stiffness against layer-wise distances (v1 Figs 9-10).

The analytics (:mod:`lightning_stiffness.analytics`) never call a model: they take the distance
matrices computed from what this module captures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.context import eval_mode
from lightning_stiffness.gram.inputs import call_model
from lightning_stiffness.gram.sharding import clean_name

__all__ = ["capture_representations"]


def capture_representations(model: nn.Module, inputs: Any, module_names: Sequence[str]) -> dict[str, Tensor]:
    """Each named module's output on the probe batch, for layerwise distances (v1 Figs 9-10:
    representations ``R^(0) = X → R^(1) → … → R^(L)``, distances by Eq. 9).

    The model runs once under ``torch.no_grad`` in eval mode; every module's ``training`` flag is
    restored afterwards, also on error. A module called more than once contributes its first call.

    Args:
        model: the network.
        inputs: a Tensor (``model(x)``), a tuple (``model(*x)``) or a Mapping (``model(**x)``); the
            number of examples ``N`` is the leading size of the first tensor found.
        module_names: names as in ``model.named_modules()``, without wrapper segments such as
            FSDP1's ``_fsdp_wrapped_module``.

    Returns:
        name → the module's output flattened to ``(N, D)`` float, detached (a copy, so later
        in-place operations do not alter it), in ``module_names`` order.

    Raises:
        ValueError: an unknown module name (the message lists the valid ones), a module that is
            not called, or a module whose output is not a tensor with leading size ``N``.
    """
    names = list(dict.fromkeys(module_names))
    # names without wrapper segments (FSDP1 units); the innermost module of a name wins
    modules = {clean_name(k): m for k, m in model.named_modules()}
    unknown = [name for name in names if name not in modules]
    if unknown:
        valid = [name for name in modules if name]
        raise ValueError(f"unknown module name(s) {unknown}; valid names are {valid}")
    n = _num_examples(inputs)
    captured: dict[str, Tensor] = {}
    handles = [modules[name].register_forward_hook(_capture_hook(name, n, captured)) for name in names]
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in captured]
    if missing:
        raise ValueError(f"module(s) {missing} were not called during the forward pass, so they have no representation")
    return {name: captured[name] for name in names}


def _capture_hook(name: str, n: int, captured: dict[str, Tensor]) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if name in captured:
            return
        if not isinstance(output, Tensor):
            raise ValueError(
                f"module {name!r} returned {type(output).__name__}, not a tensor; hook a submodule whose output "
                "is a tensor of shape (N, ...)"
            )
        if output.dim() == 0 or output.shape[0] != n:
            raise ValueError(
                f"module {name!r} returned a tensor of shape {tuple(output.shape)}, expected leading size N={n} "
                "(one row per example)"
            )
        flat = output.detach().reshape(n, -1)
        captured[name] = flat.to(
            dtype=flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32, copy=True
        )

    return hook


def _num_examples(inputs: Any) -> int:
    tensor = _first_tensor(inputs)
    if tensor is None or tensor.dim() == 0:
        raise ValueError("inputs hold no tensor with an example axis: pass a Tensor, a tuple or a Mapping of tensors")
    return int(tensor.shape[0])


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None
