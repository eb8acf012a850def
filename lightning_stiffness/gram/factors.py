"""Kronecker-factored per-example gradients and the two exact ways to turn them into a Gram.

For the layers we know (Linear, ConvNd, Embedding) the gradient of the loss of example ``n``
with respect to a weight is a sum of outer products over the ``T`` positions (tokens, pixels)
at which the weight was applied::

    g_n = Σ_t u_nt ⊗ v_nt            u_nt ∈ R^a (output side), v_nt ∈ R^b (input side)

(grouped convolutions add a group axis: one such sum per group, on disjoint weight rows).
The Gram entry between two examples then follows without forming ``g_n`` (the "kernel
trick" that Opacus and fastDP use for the diagonal only)::

    ⟨g_n, g_m⟩ = Σ_{t,s} (u_nt · u_ms) (v_nt · v_ms)

Both routes are exact; :mod:`lightning_stiffness.gram.cost` decides which one is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["DenseFactor", "Factor", "IndexFactor", "KroneckerTerm", "LazyFactor"]


@dataclass(frozen=True)
class DenseFactor:
    """Dense factor of shape ``(N, T, G, k)``: example, position, group, feature."""

    values: Tensor

    @property
    def positions(self) -> int:
        return int(self.values.shape[1])

    @property
    def groups(self) -> int:
        return int(self.values.shape[2])

    @property
    def width(self) -> int:
        return int(self.values.shape[3])

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])

    def rows(self, start: int, stop: int) -> DenseFactor:
        return DenseFactor(self.values[start:stop])


@dataclass(frozen=True)
class IndexFactor:
    """One-hot factor stored as indices ``(N, T)`` into ``size`` rows (an Embedding lookup)."""

    indices: Tensor
    size: int

    @property
    def positions(self) -> int:
        return int(self.indices.shape[1])

    @property
    def groups(self) -> int:
        return 1

    @property
    def width(self) -> int:
        return self.size

    @property
    def num_rows(self) -> int:
        return int(self.indices.shape[0])

    def rows(self, start: int, stop: int) -> IndexFactor:
        return IndexFactor(self.indices[start:stop], self.size)


class LazyFactor(Protocol):
    """A dense factor whose ``values`` ``(N, T, G, k)`` are built only when needed, and which can
    sum its outer products with a dense left factor without them (``outer_sum``): convolution
    patches (:class:`~lightning_stiffness.gram.rules.conv.ConvPatches`), which take nine times
    the input's memory to build for a 3x3 kernel."""

    @property
    def values(self) -> Tensor: ...

    @property
    def positions(self) -> int: ...

    @property
    def groups(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def num_rows(self) -> int: ...

    def rows(self, start: int, stop: int) -> LazyFactor: ...

    def outer_sum(self, left: Tensor) -> Tensor | None:
        """``Σ_t left_nt ⊗ self_nt`` as ``(n, G, a, k)`` for dense ``left`` ``(n, T, G, a)``, or
        None where this factor has no faster way than its values."""
        ...


Factor = DenseFactor | IndexFactor | LazyFactor


@dataclass(frozen=True)
class KroneckerTerm:
    """``g_n = Σ_t left_nt ⊗ right_nt``, per group."""

    left: Factor
    right: Factor

    @property
    def positions(self) -> int:
        return self.left.positions

    @property
    def groups(self) -> int:
        return max(self.left.groups, self.right.groups)

    @property
    def numel(self) -> int:
        """Number of gradient entries this term writes per example: ``G·a·b``."""
        return self.groups * self.left.width * self.right.width

    def rows(self, start: int, stop: int) -> KroneckerTerm:
        return KroneckerTerm(self.left.rows(start, stop), self.right.rows(start, stop))


def factor_inner(x: Factor, y: Factor, dtype: torch.dtype) -> Tensor:
    """All inner products ``x_nt · y_ms`` as a ``(G, n·T_x, m·T_y)`` tensor of ``dtype``."""
    if isinstance(x, IndexFactor) and isinstance(y, IndexFactor):
        eq = x.indices.reshape(-1, 1) == y.indices.reshape(1, -1)
        return eq.to(dtype).unsqueeze(0)
    if isinstance(x, IndexFactor):
        return factor_inner(y, x, dtype).transpose(1, 2)
    xv = x.values.to(dtype).permute(2, 0, 1, 3).flatten(1, 2)  # (G, nT, k)
    if isinstance(y, IndexFactor):
        if xv.shape[0] != 1:
            raise ValueError("an index factor cannot be paired with a grouped dense factor")
        return xv[0][:, y.indices.reshape(-1)].unsqueeze(0)  # (1, nT, mT)
    yv = y.values.to(dtype).permute(2, 3, 0, 1).flatten(2, 3)  # (G, k, mT)
    return torch.bmm(xv, yv)


def kernel_trick_block(p: KroneckerTerm, q: KroneckerTerm, dtype: torch.dtype) -> Tensor:
    """``K[n, m] = Σ_{g,t,s} (u^p_nt · u^q_ms)(v^p_nt · v^q_ms)`` for two row-sliced terms."""
    n, m = _num_rows(p.left), _num_rows(q.left)
    prod = factor_inner(p.left, q.left, dtype) * factor_inner(p.right, q.right, dtype)
    return prod.sum(0).reshape(n, p.positions, m, q.positions).sum(dim=(1, 3))


def materialize(terms: list[KroneckerTerm], dtype: torch.dtype) -> Tensor:
    """Per-example gradients ``Σ_terms Σ_t left ⊗ right`` flattened to ``(n, G·a·b)``."""
    total: Tensor | None = None
    for term in terms:
        g = _materialize_term(term, dtype)
        total = g if total is None else total + g
    assert total is not None
    return total


def _materialize_term(term: KroneckerTerm, dtype: torch.dtype) -> Tensor:
    left, right = term.left, term.right
    if isinstance(right, IndexFactor):
        raise ValueError("index factors are only supported on the left (row) side")
    # not isinstance(right, LazyFactor): a runtime protocol check reads every member, ``values`` too
    if not isinstance(right, DenseFactor) and isinstance(left, DenseFactor):
        summed = right.outer_sum(left.values.to(dtype))
        if summed is not None:
            return summed.to(dtype).reshape(right.num_rows, -1)
    rv = right.values.to(dtype)
    n = rv.shape[0]
    if isinstance(left, IndexFactor):
        # g[n, idx_nt, :] += right[n, t, 0, :]
        out = rv.new_zeros(n * left.size, right.width)
        offsets = torch.arange(n, device=rv.device).unsqueeze(1) * left.size
        out.index_add_(0, (left.indices + offsets).reshape(-1), rv[:, :, 0, :].reshape(-1, right.width))
        return out.reshape(n, -1)
    lv = left.values.to(dtype)
    return torch.einsum("ntga,ntgb->ngab", lv, rv).reshape(n, -1)


def _num_rows(f: Factor) -> int:
    return f.num_rows
