"""Per-layer cost model: kernel trick ("kernel_trick") or materialised per-example gradients.

For a weight whose per-example gradient is ``Σ_t u_nt ⊗ v_nt`` (``T`` positions, ``G`` groups,
``u ∈ R^a``, ``v ∈ R^b``) over ``N`` examples (docs/performance.md "How the Gram is computed"; docs/concepts.md
"Kernel trick vs materialising"):

* materialise: build ``g_n`` (``2·N·T·G·a·b`` FLOPs) then the Gram GEMM (``2·N²·G·a·b``);
  extra memory ``N·G·a·b``.
* ghost: two ``(N·T)²`` inner-product tables (``2·N²·T²·G·(a + b + 1)`` FLOPs, the +1 for
  the Hadamard product and block sum); memory ``(N·T)²·G``
  per tile.

So ghost wins roughly when ``T² (a + b) < a·b (1 + T/N)``, i.e. ``T < √(ab/(a+b))``: far
stricter than the norm-only rule of DP libraries, because a Gram also pays the ``N²ab`` GEMM.
An Embedding's one-hot side costs 1 per inner product (an equality test), not its width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning_stiffness.gram.factors import IndexFactor, KroneckerTerm

__all__: list[str] = []  # internal to the package: no public names

Strategy = Literal["kernel_trick", "materialize"]

#: Bytes per element assumed by the memory estimates (float32 accumulation).
BYTES = 4


@dataclass(frozen=True)
class LayerCost:
    """Estimated FLOPs and peak extra bytes of both exact paths for one parameter."""

    kernel_trick_flops: float
    materialize_flops: float
    kernel_trick_bytes: float
    materialize_bytes: float


def estimate_cost(terms: list[KroneckerTerm], n: int) -> LayerCost:
    """FLOP and memory estimates for the Gram of ``terms`` over ``n`` examples."""
    total_t = sum(t.positions for t in terms)
    numel = terms[0].numel
    groups = max(t.groups for t in terms)
    inner_width = max(_effective_width(t.left) + _effective_width(t.right) for t in terms)
    kernel_trick_flops = 2.0 * n * n * total_t * total_t * groups * (inner_width + 1)
    materialize_flops = 2.0 * n * total_t * numel + 2.0 * n * n * numel
    kernel_trick_bytes = 2.0 * (n * total_t) ** 2 * groups * BYTES
    materialize_bytes = float(n) * numel * BYTES
    return LayerCost(kernel_trick_flops, materialize_flops, kernel_trick_bytes, materialize_bytes)


def choose_path(terms: list[KroneckerTerm], n: int, memory_budget: float) -> Strategy:
    """The cheaper exact path; on a near tie the one that fits ``memory_budget`` untiled.

    Ghost is also taken when materialising would not fit the budget and ghost is at most
    2x slower (tiling the materialised path recomputes gradients).
    """
    cost = estimate_cost(terms, n)
    if cost.kernel_trick_flops <= cost.materialize_flops:
        return "kernel_trick"
    if cost.materialize_bytes > memory_budget and cost.kernel_trick_flops <= 2.0 * cost.materialize_flops:
        return "kernel_trick"
    return "materialize"


def _effective_width(factor: object) -> int:
    if isinstance(factor, IndexFactor):
        return 1
    return int(factor.width)  # type: ignore[attr-defined]
