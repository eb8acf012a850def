"""Stiffness from the per-example-gradient Gram matrix ``G[i, j] = g_i · g_j``.

Two jobs: turn ``G`` into pairwise stiffness (cosine, sign) and global alignment scalars
(m-coherence, gradient diversity), and average a pairwise matrix over groups of pairs (pair masks,
class stiffness matrix, within/between/all summaries, train/val split blocks).
Equation numbers refer to Fort et al. 2019, arXiv:1901.09491 v1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "StiffnessSummary",
    "class_stiffness_matrix",
    "cosine_matrix",
    "gradient_diversity",
    "m_coherence",
    "pair_mask",
    "sign_matrix",
    "split_block_summaries",
    "summarize",
    "zero_gradient_mask",
]

PAIR_KINDS = ("within", "between", "all")


# ---------------------------------------------------------------------------------------------
# Gram matrix → pairwise stiffness and global scalars
# ---------------------------------------------------------------------------------------------


def zero_gradient_mask(gram: Tensor) -> Tensor:
    """Examples whose gradient is zero: ``‖g_i‖² = G[i, i] = 0``.

    Such an example carries no alignment information (``g_i · g_j = 0`` for every ``j``).

    Returns:
        bool ``(N,)``, True where ``G[i, i] <= 0`` (a non-positive squared norm means zero).
    """
    return torch.diagonal(square_matrix(gram, "gram")) <= 0


def cosine_matrix(gram: Tensor) -> Tensor:
    """Cosine stiffness of every pair, ``cos(g_i, g_j) = G[i, j] / (‖g_i‖ ‖g_j‖)`` with
    ``‖g_i‖ = sqrt(G[i, i])`` (v3's S_cos = E[cos(g1, g2)], companion of v1 Eq. 5; docs/concepts.md).

    Pairs involving an example whose gradient norm is zero or not finite get 0 (no alignment
    information), its diagonal entry included; every other diagonal entry is exactly 1. Values
    are clamped to ``[-1, 1]``.

    Returns:
        ``(N, N)`` float tensor on ``gram``'s device.
    """
    gram = as_float(square_matrix(gram, "gram"))
    squared_norms = torch.diagonal(gram)
    informative = torch.isfinite(squared_norms) & (squared_norms > 0)
    norms = torch.where(informative, squared_norms, torch.ones_like(squared_norms)).sqrt()
    cos = (gram / norms[:, None] / norms[None, :]).clamp(-1.0, 1.0)
    keep = informative[:, None] & informative[None, :] & torch.isfinite(cos)
    cos = torch.where(keep, cos, torch.zeros_like(cos))
    self_pair = torch.eye(gram.shape[0], dtype=torch.bool, device=gram.device) & informative[:, None]
    return torch.where(self_pair, torch.ones_like(cos), cos)


def sign_matrix(gram: Tensor) -> Tensor:
    """Sign stiffness of every pair, ``sign(g_i · g_j) = sign(G[i, j])`` in ``{-1, 0, 1}``
    (v1 Eq. 5: S = E[sign(g1 · g2)]).

    Pairs involving an example with a non-finite squared norm, and NaN entries, get 0.

    Returns:
        ``(N, N)`` float tensor on ``gram``'s device.
    """
    gram = as_float(square_matrix(gram, "gram"))
    finite_example = torch.isfinite(torch.diagonal(gram))
    keep = finite_example[:, None] & finite_example[None, :] & ~torch.isnan(gram)
    return torch.where(keep, torch.sign(gram), torch.zeros_like(gram))


def m_coherence(gram: Tensor) -> float:
    """m-coherence (Chatterjee & Zielinski): ``1ᵀ G 1 / tr G = ‖Σ_i g_i‖² / Σ_i ‖g_i‖²``,
    i.e. ``m · α̂`` with ``α̂ = ‖Σ g_i‖² / (m Σ ‖g_i‖²)``.

    Equals ``m`` for ``m`` identical gradients, 1 for mutually orthogonal ones.

    Returns:
        a Python float, NaN if ``tr G = 0``.
    """
    gram = as_float(square_matrix(gram, "gram")).to(accumulation_dtype(gram.device))
    trace = float(torch.diagonal(gram).sum())
    return float(gram.sum()) / trace if trace != 0 else math.nan


def gradient_diversity(gram: Tensor) -> float:
    """Gradient diversity (Yin et al.): ``tr G / 1ᵀ G 1 = Σ_i ‖g_i‖² / ‖Σ_i g_i‖²``, the inverse
    of :func:`m_coherence`.

    Returns:
        a Python float, NaN if ``1ᵀ G 1 = 0``.
    """
    gram = as_float(square_matrix(gram, "gram")).to(accumulation_dtype(gram.device))
    total = float(gram.sum())
    return float(torch.diagonal(gram).sum()) / total if total != 0 else math.nan


# ---------------------------------------------------------------------------------------------
# Averages of a pairwise matrix over groups of pairs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StiffnessSummary:
    """Mean stiffness over same-class pairs, different-class pairs and all pairs (NaN if undefined)."""

    within: float
    between: float
    all: float


def pair_mask(labels: Tensor, kind: str, *, include_self: bool = False) -> Tensor:
    """Pairs ``(i, j)`` a stiffness average runs over (Fort et al. 2019 v1 Eq. 6: S(A, B) is the mean over
    X1 ∈ A, X2 ∈ B, X1 ≠ X2).

    Args:
        labels: ``(N,)`` class labels.
        kind: ``"within"`` (same class), ``"between"`` (different class) or ``"all"``.
        include_self: keep the diagonal ``i = j`` (excluded by default, as in v3).

    Returns:
        bool ``(N, N)`` on ``labels``' device.
    """
    labels = _as_vector(labels, "labels")
    n = labels.shape[0]
    if kind == "within":
        mask = labels[:, None] == labels[None, :]
    elif kind == "between":
        mask = labels[:, None] != labels[None, :]
    elif kind == "all":
        mask = torch.ones(n, n, dtype=torch.bool, device=labels.device)
    else:
        raise ValueError(f"unknown pair kind {kind!r}; expected one of {PAIR_KINDS}")
    if not include_self:
        mask = mask & ~torch.eye(n, dtype=torch.bool, device=labels.device)
    return mask


def class_stiffness_matrix(
    stiffness: Tensor, labels: Tensor, num_classes: int | None = None, *, include_self: bool = False
) -> Tensor:
    """Class stiffness matrix ``C(c_a, c_b) = E_{X1 ∈ c_a, X2 ∈ c_b, X1 ≠ X2}[S(X1, X2)]``
    (v1 Eq. 6 with the v3 condition X1 ≠ X2).

    Non-finite stiffness entries are ignored. An entry with no pair (an absent class, or the
    diagonal of a class with one example when ``include_self`` is False) is NaN.

    Args:
        stiffness: ``(N, N)`` pairwise stiffness, e.g. :func:`sign_matrix` or :func:`cosine_matrix`.
        labels: ``(N,)`` integer class labels in ``[0, num_classes)``.
        num_classes: ``C``; default ``max(labels) + 1``.
        include_self: also average the self pairs ``i = j`` into the diagonal.

    Returns:
        ``(C, C)`` float tensor on ``stiffness``' device.
    """
    stiffness = as_float(square_matrix(stiffness, "stiffness"))
    labels, num_classes = _class_labels(labels, stiffness, num_classes)
    sums, counts = _group_pair_sums(stiffness, labels, num_classes, include_self)
    return _means(sums, counts, stiffness.dtype)


def summarize(
    stiffness: Tensor, labels: Tensor, num_classes: int | None = None, *, include_self: bool = False
) -> StiffnessSummary:
    """Within-class, between-class and all-pairs stiffness.

    - within = ``1/N_c Σ_c C(c, c)`` (v1 Eq. 6-7; NaN classes ignored);
    - between = ``1/(N_c(N_c − 1)) Σ_{c1} Σ_{c2 ≠ c1} C(c1, c2)`` (v1 Eq. 7; NaN entries ignored);
    - all = mean of the stiffness over all pairs ``i ≠ j`` (``i = j`` too if ``include_self``).

    ``C`` is :func:`class_stiffness_matrix`; arguments as there.
    """
    stiffness = as_float(square_matrix(stiffness, "stiffness"))
    labels, num_classes = _class_labels(labels, stiffness, num_classes)
    return _summary(*_group_pair_sums(stiffness, labels, num_classes, include_self), stiffness.dtype)


def split_block_summaries(
    stiffness: Tensor,
    labels: Tensor,
    splits: Tensor,
    split_names: Sequence[str],
    num_classes: int | None = None,
    *,
    include_self: bool = False,
) -> dict[str, StiffnessSummary]:
    """:func:`summarize` per block of pairs drawn from two splits (v3's sampling modes: train-train,
    train-val, val-val).

    Args:
        splits: ``(N,)`` integer index into ``split_names`` per example (e.g. 0 = train, 1 = val).
        split_names: name of each split.
        include_self: keep ``i = j`` in same-split blocks (cross-split blocks have no self pairs).

    Returns:
        for every unordered pair ``a ≤ b`` of splits present, the summary over pairs with one
        example in ``a`` and the other in ``b``, keyed ``"<name a>-<name b>"`` in ``split_names``
        order (e.g. ``"train-train"``, ``"train-val"``, ``"val-val"``).
    """
    return stiffness_statistics(
        stiffness, labels, splits, split_names, num_classes, include_self=include_self, blocks_only=True
    )[1]


def stiffness_statistics(
    stiffness: Tensor,
    labels: Tensor,
    splits: Tensor,
    split_names: Sequence[str],
    num_classes: int | None = None,
    *,
    include_self: bool = False,
    blocks_only: bool = False,
) -> tuple[Tensor, dict[str, StiffnessSummary]]:
    """:func:`class_stiffness_matrix`, :func:`summarize` (key ``"all"``) and, with more than one
    split name, :func:`split_block_summaries`, from one pass over the ``(N, N)`` matrix.

    Every statistic is a ratio of sums over pairs grouped by ``(split_i, class_i, split_j,
    class_j)``: with ``H`` the ``(N, S·C)`` one-hot of the group ``split · C + class``, the sums
    ``Hᵀ (S ⊙ W) H`` and pair counts ``Hᵀ W H`` (``W``: finite entries, the diagonal removed
    unless ``include_self``) hold all of them; the class matrix sums over both split axes, the
    split block ``(a, b)`` takes ``[a, :, b, :] + [b, :, a, :]`` (``a ≠ b``) or ``[a, :, a, :]``.

    Args:
        blocks_only: compute only the split blocks (the class matrix returned is then empty).

    Returns:
        ``(class matrix (C, C), {"all": summary, "<a>-<b>": summary, …})``.
    """
    stiffness = as_float(square_matrix(stiffness, "stiffness"))
    labels, num_classes = _class_labels(labels, stiffness, num_classes)
    splits = _as_vector(splits, "splits").to(stiffness.device)
    if splits.shape[0] != stiffness.shape[0]:
        raise ValueError(f"splits has {splits.shape[0]} entries but the stiffness matrix has N={stiffness.shape[0]}")
    if splits.is_floating_point() or splits.is_complex():
        raise ValueError("splits must be an integer tensor of indices into split_names")
    present = sorted({int(s) for s in torch.unique(splits).tolist()})
    if present and (present[0] < 0 or present[-1] >= len(split_names)):
        raise ValueError(f"splits must index split_names {list(split_names)}; found split indices {present}")
    num_splits = len(split_names)
    groups = splits.long() * num_classes + labels
    sums, counts = _group_pair_sums(stiffness, groups, num_splits * num_classes, include_self)
    shape = (num_splits, num_classes, num_splits, num_classes)
    sums, counts = sums.reshape(shape), counts.reshape(shape)
    summaries: dict[str, StiffnessSummary] = {}
    class_matrix = stiffness.new_empty(0, 0)
    if not blocks_only:
        class_sums, class_counts = sums.sum(dim=(0, 2)), counts.sum(dim=(0, 2))
        class_matrix = _means(class_sums, class_counts, stiffness.dtype)
        summaries["all"] = _summary(class_sums, class_counts, stiffness.dtype)
    if blocks_only or num_splits > 1:
        for position, a in enumerate(present):
            for b in present[position:]:
                block_sums, block_counts = sums[a, :, b, :], counts[a, :, b, :]
                if a != b:
                    block_sums, block_counts = block_sums + sums[b, :, a, :], block_counts + counts[b, :, a, :]
                key = f"{split_names[a]}-{split_names[b]}"
                summaries[key] = _summary(block_sums, block_counts, stiffness.dtype)
    return class_matrix, summaries


def _group_pair_sums(stiffness: Tensor, groups: Tensor, num_groups: int, include_self: bool) -> tuple[Tensor, Tensor]:
    """``(sums, counts)``, each ``(G, G)``: the sum of the finite ``stiffness[i, j]`` and their
    number over pairs with ``groups[i] = a`` and ``groups[j] = b`` (``i ≠ j`` unless
    ``include_self``), as ``Hᵀ (S ⊙ W) H`` and ``Hᵀ W H`` with one-hot ``H`` (float64 sums)."""
    dtype = accumulation_dtype(stiffness.device)
    finite = torch.isfinite(stiffness)
    onehot = F.one_hot(groups, num_groups).to(dtype)
    if bool(finite.all()):  # the usual case: counts are products of group sizes, no second product
        values = stiffness.to(dtype, copy=True)
        sizes = onehot.sum(dim=0)
        counts = sizes[:, None] * sizes[None, :]
        if not include_self:
            counts = counts - torch.diag(sizes)
    else:
        values = torch.where(finite, stiffness, torch.zeros_like(stiffness)).to(dtype)
        weights = finite.to(dtype)
        if not include_self:
            weights.fill_diagonal_(0)
        counts = onehot.T @ (weights @ onehot)
    if not include_self:
        values.fill_diagonal_(0)
    return onehot.T @ (values @ onehot), counts


def _means(sums: Tensor, counts: Tensor, dtype: torch.dtype) -> Tensor:
    """``sums / counts`` where ``counts > 0``, NaN elsewhere, as ``dtype``."""
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.nan)).to(dtype)


def _summary(sums: Tensor, counts: Tensor, dtype: torch.dtype) -> StiffnessSummary:
    """Within (mean of the class matrix's diagonal), between (of its off-diagonal, Eq. 7) and
    all (pair mean) from per-class-pair sums and counts; the class matrix is rounded to
    ``dtype`` first, as :func:`class_stiffness_matrix` returns it."""
    matrix = _means(sums, counts, dtype)
    off_diagonal = ~torch.eye(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    total = int(counts.sum())
    return StiffnessSummary(
        within=_nanmean(torch.diagonal(matrix)),
        between=_nanmean(matrix[off_diagonal]),
        all=float(sums.sum()) / total if total > 0 else math.nan,
    )


def _nanmean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return math.nan
    return float(finite.to(accumulation_dtype(values.device)).mean())


def _class_labels(labels: Tensor, stiffness: Tensor, num_classes: int | None) -> tuple[Tensor, int]:
    labels = _as_vector(labels, "labels").to(stiffness.device)
    if labels.shape[0] != stiffness.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but the stiffness matrix has N={stiffness.shape[0]}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    labels = labels.long()
    low = int(labels.min()) if labels.numel() else 0
    high = int(labels.max()) if labels.numel() else -1
    if num_classes is None:
        num_classes = high + 1
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); found labels in [{low}, {high}]")
    return labels, num_classes


# ---------------------------------------------------------------------------------------------
# Small tensor helpers shared by the analytics modules
# ---------------------------------------------------------------------------------------------


def square_matrix(matrix: Tensor, name: str) -> Tensor:
    """Check that ``matrix`` is an ``(N, N)`` tensor and return it."""
    if not isinstance(matrix, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {tuple(matrix.shape)}")
    return matrix


def as_float(tensor: Tensor) -> Tensor:
    """``tensor`` as float32 or float64 (other dtypes become float32)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.to(torch.float32)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums and matmuls (exact, never TF32), float32 where float64 is unsupported (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_vector(values: Tensor, name: str) -> Tensor:
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 1:
        raise ValueError(f"{name} must be a 1-D (N,) tensor, got shape {tuple(values.shape)}")
    return values
