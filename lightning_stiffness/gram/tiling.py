"""Memory-bounded accumulation of Gram blocks (docs/performance.md "How the Gram is computed").

Every routine adds into a preallocated ``(N, N)`` accumulator and touches at most about
``memory_budget`` bytes of temporaries, so the peak is the probe's activations plus one tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_stiffness.gram.cost import BYTES
from lightning_stiffness.gram.factors import KroneckerTerm, kernel_trick_block, materialize

__all__: list[str] = []  # internal to the package: no public names


def tile_size(n: int, bytes_per_row: float, memory_budget: float, *, squared: bool = False) -> int:
    """Largest number of example rows per tile so that a tile fits ``memory_budget``.

    ``squared``: the tile's size grows with the square of its rows (ghost tables).
    """
    if bytes_per_row <= 0:
        return n
    rows = math.sqrt(memory_budget / bytes_per_row) if squared else memory_budget / bytes_per_row
    return max(1, min(n, int(rows)))


def _tiles(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _add_tile(out: Tensor, rows: tuple[int, int], cols: tuple[int, int], block: Tensor) -> None:
    """Add a lower-triangle tile of a symmetric matrix and, off the diagonal, its mirror image."""
    (i0, i1), (j0, j1) = rows, cols
    out[i0:i1, j0:j1] += block
    if j0 != i0:
        out[j0:j1, i0:i1] += block.T


def add_kernel_trick_gram(out: Tensor, terms: list[KroneckerTerm], memory_budget: float) -> None:
    """``out += K`` with ``K[n, m] = Σ_{p,q} Σ_{t,s} (u^p_nt·u^q_ms)(v^p_nt·v^q_ms)``, tiled."""
    n = out.shape[0]
    total_t = sum(t.positions for t in terms)
    groups = max(t.groups for t in terms)
    # two inner-product tables plus their product, each (c·T)² per group
    size = tile_size(n, 3.0 * total_t**2 * groups * BYTES, memory_budget, squared=True)
    tiles = _tiles(n, size)
    for bi, (i0, i1) in enumerate(tiles):
        rows_i = [t.rows(i0, i1) for t in terms]
        for j0, j1 in tiles[: bi + 1]:
            rows_j = rows_i if j0 == i0 else [t.rows(j0, j1) for t in terms]
            block = sum(kernel_trick_block(p, q, out.dtype) for p in rows_i for q in rows_j)
            assert isinstance(block, Tensor)
            _add_tile(out, (i0, i1), (j0, j1), block)


def add_materialized_gram(out: Tensor, terms: list[KroneckerTerm], memory_budget: float) -> None:
    """``out += g gᵀ`` with ``g`` the materialised per-example gradients of ``terms``."""
    numel = terms[0].numel
    add_row_gram(
        out, lambda i0, i1: materialize([t.rows(i0, i1) for t in terms], out.dtype), numel * BYTES, memory_budget
    )


def add_row_gram(
    out: Tensor,
    rows: Callable[[int, int], Tensor],
    bytes_per_row: float,
    memory_budget: float,
    column_blocks: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> None:
    """``out += J Jᵀ`` where ``rows(i0, i1)`` returns rows ``i0:i1`` of ``J``.

    With ``column_blocks`` — pairs ``(target, column indices)`` — each target instead gets the
    Gram of its own columns (``out`` is then left alone). When all of ``J`` fits the budget it is
    built once; otherwise row tiles are recomputed for each tile pair of the lower triangle.
    """
    n = out.shape[0]
    blocks = column_blocks if column_blocks is not None else [(out, None)]
    size = tile_size(n, 2.0 * bytes_per_row, memory_budget)
    if size >= n:  # all of J fits: build it once
        jac = rows(0, n).to(out.dtype)
        for target, cols in blocks:
            add_gram_of(target, jac if cols is None else jac[:, cols])
        return
    tiles = _tiles(n, size)
    for bi, (i0, i1) in enumerate(tiles):
        ji = rows(i0, i1).to(out.dtype)
        for j0, j1 in tiles[: bi + 1]:
            jj = ji if j0 == i0 else rows(j0, j1).to(out.dtype)
            for target, cols in blocks:
                a, b = (ji, jj) if cols is None else (ji[:, cols], jj[:, cols])
                _add_tile(target, (i0, i1), (j0, j1), inner_products(a, b))


def add_dense_gram(out: Tensor, grads: Tensor) -> None:
    """``out += g gᵀ`` for already materialised per-example gradients ``(N, D)``."""
    add_gram_of(out, grads.reshape(grads.shape[0], -1).to(out.dtype))


#: ``add_gram_of`` splits J into this many row tiles and multiplies only the lower triangle.
SYMMETRY_TILES = 4
#: Below this many rows one GEMM is faster than several small ones.
SYMMETRY_MIN_ROWS = 256


def add_gram_of(out: Tensor, jac: Tensor) -> None:
    """``out += J Jᵀ`` exploiting symmetry: only tiles on and below the diagonal are multiplied
    and mirrored (10 of 16 tile products for 4 tiles, about 5/8 of the FLOPs of one GEMM)."""
    n = jac.shape[0]
    if n < SYMMETRY_MIN_ROWS:
        out += inner_products(jac, jac)
        return
    tiles = _tiles(n, -(-n // SYMMETRY_TILES))
    for bi, (i0, i1) in enumerate(tiles):
        for j0, j1 in tiles[: bi + 1]:
            _add_tile(out, (i0, i1), (j0, j1), inner_products(jac[i0:i1], jac[j0:j1]))


#: Columns per partial product in :func:`inner_products`.
PRODUCT_CHUNK = 4096


def inner_products(a: Tensor, b: Tensor) -> Tensor:
    """``a @ bᵀ`` (rows are per-example gradients) with a rounding error that does not grow with
    the number of columns.

    One float32 GEMM over ``P`` columns accumulates rounding error that grows with ``P`` (about
    5e-4 relative for the 11M parameters of a ResNet-18). Here ``a bᵀ = Σ_c a_c b_cᵀ`` over column
    chunks ``c`` of :data:`PRODUCT_CHUNK`: each partial product is a float32 GEMM over a few
    thousand columns, and the partial products are summed in float64 (1.6e-7 on the ResNet-18, at
    about the speed of the single GEMM). Float64 inputs are multiplied directly."""
    if a.dtype == torch.float64 or a.shape[1] <= PRODUCT_CHUNK:
        return a @ b.T
    wide = torch.float32 if a.device.type == "mps" else torch.float64  # MPS has no float64
    total = torch.zeros(a.shape[0], b.shape[0], dtype=wide, device=a.device)
    for start in range(0, a.shape[1], PRODUCT_CHUNK):
        stop = start + PRODUCT_CHUNK
        total += a[:, start:stop] @ b[:, start:stop].T
    return total.to(a.dtype)
