"""Distances between probe examples, in input space or in a layer's representation.

Fort et al. 2019 measure stiffness against the cosine similarity of the (preprocessed) inputs
and of every layer's representation (v1 §2.3, Eq. 9), v3 against the cosine distance
``1 − cos`` in input space (docs/concepts.md "Distances").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_stiffness.analytics.stiffness import as_float
from lightning_stiffness.gram.context import eval_mode
from lightning_stiffness.gram.inputs import call_model
from lightning_stiffness.gram.sharding import clean_name
from lightning_stiffness.preprocessing import standardize_to_unit_sphere

__all__ = [
    "capture_representations",
    "cosine_distance_matrix",
    "cosine_similarity_matrix",
    "input_distances",
    "preprocess_inputs",
]


def preprocess_inputs(inputs: Tensor, *, standardize: bool = True) -> Tensor:
    """The paper's input preprocessing (:mod:`lightning_stiffness.preprocessing`): zero mean and unit variance per
    feature, then unit length per example (v1 §2.3 "zero mean and unit length"; v3 "normalised
    to the unit sphere").

    Args:
        inputs: ``(N, ...)`` examples; flattened to ``(N, D)``.
        standardize: subtract the per-feature mean over the ``N`` examples and divide by the
            per-feature (population) standard deviation; constant features become 0.

    Returns:
        ``(N, D)`` float tensor whose rows have L2 norm 1 (an all-zero row stays zero).
    """
    features = _flatten_examples(inputs, "inputs")
    return standardize_to_unit_sphere(features) if standardize else _unit_rows(features)


def cosine_similarity_matrix(features: Tensor) -> Tensor:
    """Cosine similarity of every pair of rows, ``dot(R1, R2) = R1 · R2 / (|R1| |R2|)``
    (v1 Eq. 9), in ``[-1, 1]``.

    Rows are unit-normalised first; a zero row has similarity 0 with every row, itself included;
    every other diagonal entry is exactly 1.

    Args:
        features: ``(N, ...)`` examples (inputs or representations); flattened to ``(N, D)``.

    Returns:
        ``(N, N)`` float tensor on ``features``' device.
    """
    unit = _unit_rows(_flatten_examples(features, "features"))
    similarity = (unit @ unit.T).clamp(-1.0, 1.0)
    nonzero = unit.abs().sum(dim=1) > 0
    self_pair = torch.eye(unit.shape[0], dtype=torch.bool, device=unit.device) & nonzero[:, None]
    return torch.where(self_pair, torch.ones_like(similarity), similarity)


def cosine_distance_matrix(features: Tensor) -> Tensor:
    """Cosine distance ``1 − R1 · R2 / (|R1| |R2|)`` of every pair of rows (v3 input-space
    distance; ``1 −`` v1 Eq. 9), in ``[0, 2]``; see :func:`cosine_similarity_matrix`.
    """
    return 1.0 - cosine_similarity_matrix(features)


def input_distances(inputs: Tensor) -> Tensor:
    """v3 input-space distance: :func:`cosine_distance_matrix` of :func:`preprocess_inputs`.

    For unit-length rows this is ``½ |X1 − X2|²`` (docs/concepts.md "Distances").
    """
    return cosine_distance_matrix(preprocess_inputs(inputs))


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
        captured[name] = flat.to(dtype=as_float(flat).dtype, copy=True)

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


def _flatten_examples(tensor: Tensor, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError(f"{name} must have an example axis (shape (N, ...)), got a scalar")
    return as_float(tensor.reshape(tensor.shape[0], -1))


def _unit_rows(features: Tensor) -> Tensor:
    norms = features.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, features / torch.where(norms > 0, norms, torch.ones_like(norms)), 0.0)
