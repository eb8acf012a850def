"""What the engine needs to know about sharded (FSDP) models.

Two kinds of sharding reach the engine:

* **FSDP2** (``fully_shard``, Lightning's ``ModelParallelStrategy``): parameters are ``DTensor``
  shards; each module's pre-forward hook swaps in unsharded parameters (leaves of the graph).
* **FSDP1** (``FullyShardedDataParallel``, Lightning's ``strategy="fsdp"``): the model is wrapped,
  parameter names gain ``_fsdp_wrapped_module.`` segments, and with ``use_orig_params=True`` each
  original parameter is a view of a flat shard; during a wrapped unit's forward its modules hold
  views of the all-gathered flat parameter instead (computed tensors, not leaves).

Either way the layer rules need only activations and backprops, never the weights, so every rank
can compute the Gram of any layer from one forward through the (wrapper's) own ``forward``. What
no rank can do is the exact ``vmap``/loop fallback, which needs whole parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["check_not_flat", "clean_name", "is_sharded"]

#: Attributes under which wrappers (FSDP1, activation checkpointing, ``torch.compile``) hold the module.
WRAPPER_ATTRIBUTES = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def clean_name(name: str) -> str:
    """A parameter or module name without wrapper segments: the name users know
    (``_fsdp_wrapped_module.net.0.weight`` → ``net.0.weight``)."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_ATTRIBUTES)


def is_dtensor(p: nn.Parameter) -> bool:
    return type(p).__name__ == "DTensor"


def is_fsdp1_wrapper(module: nn.Module) -> bool:
    return type(module).__name__ == "FullyShardedDataParallel"


def has_fsdp1_wrapper(model: nn.Module) -> bool:
    return any(is_fsdp1_wrapper(m) for m in model.modules())


def is_sharded(model: nn.Module, params: Iterable[nn.Parameter]) -> bool:
    """Whether the forward gathers parameters collectively (FSDP1 or FSDP2): then every rank must run
    it, and the exact fallback (which needs whole parameters) is unavailable."""
    return has_fsdp1_wrapper(model) or any(is_dtensor(p) for p in params)


def check_not_flat(params: dict[str, nn.Parameter]) -> None:
    """Refuse FSDP1's flat parameters (``use_orig_params=False``): they hide which layer owns what."""
    flat = [name for name, p in params.items() if getattr(p, "_is_flat_param", False)]
    if flat:
        raise ValueError(
            f"{flat[:2]} are FSDP flat parameters (FullyShardedDataParallel with use_orig_params=False), which "
            "merge many layers into one tensor; per-layer gradients cannot be told apart. Wrap the model with "
            "use_orig_params=True (the default of Lightning's FSDPStrategy) to measure it."
        )
