"""Per-layer cost model: kernel trick ("kernel_trick") or materialised per-example gradients.

For a weight whose per-example gradient is ``Σ_t u_nt ⊗ v_nt`` (``T`` positions, ``G`` groups,
``u ∈ R^a``, ``v ∈ R^b``) over ``N`` examples (docs/performance.md "How the Gram is computed"; docs/concepts.md
"Kernel trick vs materialising"):

* materialise: build ``g_n`` (``2·N·T·G·a·b`` FLOPs) then the Gram GEMM (``2·N²·G·a·b``);
  extra memory ``N·G·a·b``.
* kernel trick: two ``(N·T)²`` inner-product tables (``2·N²·T²·G·(a + b + 1)`` FLOPs, the +1 for
  the Hadamard product and block sum); memory ``(N·T)²·G``
  per tile.

So the kernel trick wins roughly when ``T² (a + b) < a·b (1 + T/N)``, i.e. ``T < √(ab/(a+b))``: far
stricter than the norm-only rule of DP libraries, because a Gram also pays the ``N²ab`` GEMM.
An Embedding's one-hot side costs 1 per inner product (an equality test), not its width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

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
    kernel_trick_flops, materialize_flops = kronecker_flops(n, total_t, groups, inner_width, numel)
    kernel_trick_bytes = 2.0 * (n * total_t) ** 2 * groups * BYTES
    materialize_bytes = float(n) * numel * BYTES
    return LayerCost(kernel_trick_flops, materialize_flops, kernel_trick_bytes, materialize_bytes)


def kronecker_flops(n: int, positions: int, groups: int, inner_width: int, numel: int) -> tuple[float, float]:
    """(kernel trick, materialise) FLOPs of a Gram over ``n`` examples of a weight with ``numel``
    entries whose per-example gradient is a sum over ``positions`` Kronecker products whose
    factors are ``inner_width`` wide together (module doc)."""
    kernel_trick = 2.0 * n * n * positions * positions * groups * (inner_width + 1)
    materialize = 2.0 * n * positions * numel + 2.0 * n * n * numel
    return kernel_trick, materialize


def choose_path(terms: list[KroneckerTerm], n: int, memory_budget: float) -> Strategy:
    """The cheaper exact path; on a near tie the one that fits ``memory_budget`` untiled.

    The kernel trick is also taken when materialising would not fit the budget and it is at most
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


# --------------------------------------------------------------------------- whole model: kernel or vmap

#: ``auto`` times the whole-model ``vmap`` against the hooks path (once per model and probe shape)
#: only when the kernel trick saves less than this fraction of the per-example-gradient FLOPs.
TRIAL_MAX_SAVING = 0.5
#: ... and only when materialising every per-example gradient costs at least this many FLOPs
#: (below it both take milliseconds and timing them costs more than it could save).
TRIAL_MIN_FLOPS = 1e8

AutoPlan = Literal["hooks", "trial"]


@dataclass(frozen=True)
class ModelCost:
    """Per-example-gradient FLOPs of the whole model by both methods, and ``J``'s size.

    ``vmap_flops``: every per-example gradient materialised and ``J Jᵀ`` (what ``vmap`` does);
    ``hooks_flops``: each Linear/Conv weight by the cheaper of kernel trick and materialising, every other
    parameter materialised. The forward and backward pass both methods run is left out.
    """

    hooks_flops: float
    vmap_flops: float
    jacobian_bytes: float

    @property
    def saving(self) -> float:
        """Fraction of ``vmap_flops`` the kernel trick saves, ``1 - kernel/vmap``."""
        return 1.0 - self.hooks_flops / self.vmap_flops if self.vmap_flops > 0 else 0.0


#: Input and output shape of every call of a module on a one-example forward.
Shapes = Sequence[tuple[tuple[int, ...], tuple[int, ...]]]


def module_flops(module: nn.Module, calls: Shapes, n: int) -> tuple[float, float] | None:
    """(hooks path, materialise) FLOPs for the weight and bias of a Linear or ConvNd module from
    the shapes of its calls on one example (``T`` = positions per call, summed over calls);
    ``None`` for other modules."""
    if isinstance(module, nn.Linear):
        width_in, width_out, groups = module.in_features, module.out_features, 1
        positions = sum(math.prod(inp) // width_in for inp, _ in calls if inp)
    elif isinstance(module, nn.modules.conv._ConvNd):
        groups = module.groups
        width_in = module.in_channels // groups * math.prod(module.kernel_size)
        width_out = module.out_channels // groups
        positions = sum(math.prod(out) // module.out_channels for _, out in calls if out)
    else:
        return None
    if positions == 0:
        return None
    numel = sum(p.numel() for p in module.parameters(recurse=False))
    kernel_trick, materialize = kronecker_flops(n, positions, groups, width_in + width_out, numel)
    return min(kernel_trick, materialize), materialize


def model_cost(
    modules: Mapping[str, nn.Module], shapes: Mapping[str, Shapes], numels: Mapping[str, int], n: int
) -> ModelCost:
    """:class:`ModelCost` over ``n`` examples: ``numels`` holds the number of selected entries per
    owning module, ``shapes`` the calls recorded for those that are Linear/Conv."""
    kernel = vmap = 0.0
    for name, numel in numels.items():
        flops = module_flops(modules[name], shapes.get(name, []), n) if name in modules else None
        if flops is None:
            dense = 2.0 * n * numel + 2.0 * n * n * numel
            flops = (dense, dense)
        kernel += flops[0]
        vmap += flops[1]
    return ModelCost(kernel, vmap, float(n) * sum(numels.values()) * BYTES)


def plan_auto(cost: ModelCost, memory_budget: float, sharded: bool) -> AutoPlan:
    """``"trial"`` (time both methods once) when the whole model's ``vmap`` may be the faster
    exact method: not sharded (``vmap`` needs whole parameters), ``J`` fits the budget twice
    (built in one tile, no recomputation), the kernel trick saves less than
    :data:`TRIAL_MAX_SAVING` of the FLOPs and the work is at least :data:`TRIAL_MIN_FLOPS`.
    Else ``"hooks"``."""
    if sharded or 2.0 * cost.jacobian_bytes > memory_budget:
        return "hooks"
    if cost.saving >= TRIAL_MAX_SAVING or cost.vmap_flops < TRIAL_MIN_FLOPS:
        return "hooks"
    return "trial"
