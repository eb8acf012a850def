"""Distances between probe examples, in input space or in a layer's representation.

Fort et al. 2019 measure stiffness against the cosine similarity of the (preprocessed) inputs
and of every layer's representation (v1 §2.3, Eq. 9), v3 against the cosine distance
``1 − cos`` in input space (docs/concepts.md "Distances").
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_stiffness.analytics.stiffness import as_float
from lightning_stiffness.preprocessing import standardize_to_unit_sphere

__all__ = [
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


def _flatten_examples(tensor: Tensor, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError(f"{name} must have an example axis (shape (N, ...)), got a scalar")
    return as_float(tensor.reshape(tensor.shape[0], -1))


def _unit_rows(features: Tensor) -> Tensor:
    norms = features.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, features / torch.where(norms > 0, norms, torch.ones_like(norms)), 0.0)
