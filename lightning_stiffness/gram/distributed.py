"""The Gram across processes: each rank computes the Gram of its share of the parameters,
one ``all_reduce(SUM)`` adds them up (``G = Σ_blocks G_block`` over disjoint parameter sets).

Every rank must call :func:`distributed_gram` with the same model and probe at the same time
(Lightning DDP replicates both). The capture pass runs on every rank (cheap); the per-layer
Gram work — the expensive part — is split by a greedy balance of parameter sizes. Failures
are agreed on first, so one rank's error (e.g. out of memory) raises on every rank instead of
leaving the others waiting in a collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_stiffness.gram.api import GramResult, per_example_gram_blocks, select_parameters, unwrap_model
from lightning_stiffness.gram.hooks import block_name
from lightning_stiffness.gram.sharding import is_sharded

__all__ = ["agreed_sizes", "distributed_gram", "is_distributed", "partition_parameters"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def partition_parameters(sizes: dict[str, int], world_size: int) -> list[list[str]]:
    """Split parameter names into ``world_size`` groups of about equal total size (largest
    first onto the least-loaded rank); deterministic, so ranks that agree on ``sizes`` compute
    the same split."""
    loads = [0] * world_size
    groups: list[list[str]] = [[] for _ in range(world_size)]
    for name in sorted(sizes, key=lambda k: (-sizes[k], k)):
        target = loads.index(min(loads))
        groups[target].append(name)
        loads[target] += sizes[name]
    return groups


def agreed_sizes(params: dict[str, nn.Parameter], device: torch.device, group: Any = None) -> dict[str, int]:
    """Parameter sizes every rank agrees on: the sum over ranks of the local sizes. Replicated
    (DDP) and DTensor parameters report the same size everywhere, but FSDP1's parameter views
    hold a different shard length on each rank, which would give each rank its own split."""
    names = sorted(params)
    local = torch.tensor([params[k].numel() for k in names], dtype=torch.float64, device=device)
    dist.all_reduce(local, group=group)
    return {k: int(v) for k, v in zip(names, local.tolist())}


def distributed_gram(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    *,
    params: Any = None,
    return_blocks: bool = False,
    group: Any = None,
    **kwargs: Any,
) -> GramResult:
    """:func:`~lightning_stiffness.per_example_gram_blocks` with the parameter work split across
    the ranks of ``group`` (default: the world); every rank receives the full result.
    Without an initialised process group it is the single-process function."""
    if not is_distributed():
        return per_example_gram_blocks(model, inputs, targets, params=params, return_blocks=return_blocks, **kwargs)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    model = unwrap_model(model)
    selected = select_parameters(model, params)
    device = next(iter(selected.values())).device
    groups = partition_parameters(agreed_sizes(selected, device, group), world)
    if not all(groups) and is_sharded(model, selected.values()):
        # a sharded forward gathers parameters collectively: a rank that skipped it would hang the rest
        raise ValueError(
            f"{len(selected)} selected parameter(s) for {world} ranks: with sharded (FSDP) parameters every rank "
            "needs a share of the work; select more parameters or use fewer ranks"
        )
    mine = groups[rank]
    blocks = sorted({block_name(k) for k in selected})
    n = int(targets.shape[0])
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in selected.values()) else torch.float32
    partial: GramResult | None = None
    error = ""
    try:
        if mine:
            partial = per_example_gram_blocks(
                model, inputs, targets, params=mine, return_blocks=return_blocks, **kwargs
            )
    except Exception as err:  # agreed on below so that no rank waits forever
        error = f"{type(err).__name__}: {err}"
    ok = torch.tensor([0.0 if error else 1.0], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
    if ok.item() < 1.0:
        raise RuntimeError(
            f"distributed Gram failed on at least one rank{' (this one: ' + error + ')' if error else ''}"
        )

    stacked = torch.zeros(1 + (len(blocks) if return_blocks else 0), n, n, dtype=dtype, device=device)
    if partial is not None:
        stacked[0] = partial.gram
        if return_blocks:
            for i, name in enumerate(blocks):
                if name in partial.blocks:
                    stacked[1 + i] = partial.blocks[name]
    dist.all_reduce(stacked, group=group)
    paths = dict(partial.paths) if partial is not None else {}
    gathered: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(gathered, paths, group=group)
    merged = {k: v for part in gathered if part for k, v in part.items()}
    gram = stacked[0]
    nonfinite = int((~torch.isfinite(torch.diagonal(gram))).sum())
    block_grams = {name: stacked[1 + i] for i, name in enumerate(blocks)} if return_blocks else {}
    return GramResult(gram, block_grams, merged, partial.method if partial else "hooks", nonfinite)
