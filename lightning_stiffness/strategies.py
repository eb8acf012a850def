"""Which module the probe runs through under each Lightning strategy.

Single device, DDP and ModelParallelStrategy (FSDP2) leave the LightningModule callable as it is:
the probe calls the measured module directly. Lightning's ``FSDPStrategy`` (FSDP1) wraps the
LightningModule in ``FullyShardedDataParallel``; only the wrapper's ``forward`` gathers the
parameters its units own, so the probe must go through it. For a measured submodule
(``module_attr``) the LightningModule's ``forward`` is redirected to that submodule for the
duration of the call, as Lightning itself does for ``training_step``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import (
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
)
from torch import nn

from lightning_stiffness.gram import GramResult
from lightning_stiffness.gram.sharding import is_fsdp1_wrapper

__all__ = ["call_target", "strategy_problem"]

SUPPORTED_STRATEGIES = (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy, FSDPStrategy)


def strategy_problem(strategy: Strategy) -> str | None:
    """Why the callback cannot measure under ``strategy`` (with what to do instead), or ``None``."""
    if not isinstance(strategy, SUPPORTED_STRATEGIES):
        return (
            f"supports single-device, DDP, FSDP (FSDPStrategy) and ModelParallelStrategy (FSDP2) training, not "
            f"{type(strategy).__name__}: its wrapper (e.g. DeepSpeed's engine) hides the layers that per-example "
            "gradients are read from. Use one of those paths, or remove the callback for this run."
        )
    if isinstance(strategy, FSDPStrategy) and not strategy.kwargs.get("use_orig_params", True):
        return (
            "FSDPStrategy(use_orig_params=False) merges each unit's parameters into one flat tensor, so "
            "per-layer gradients cannot be told apart; leave use_orig_params at its default (True)."
        )
    if isinstance(strategy, FSDPStrategy) and getattr(strategy.cpu_offload, "offload_params", False):
        return (
            "FSDPStrategy(cpu_offload=True) keeps the parameters on the CPU while the layers compute on the "
            "GPU; the Gram engine places its work on the parameters' device and is not built for that split. "
            "Train without cpu_offload to measure stiffness, or remove the callback for this run."
        )
    return None


@dataclass
class CallTarget:
    """The module the engine calls, and where the measured module sits inside it.

    Names inside ``model`` are the measured module's names behind ``prefix`` (``"model."`` for
    ``module_attr="model"`` under FSDP1, else empty); :meth:`params`, :meth:`layers` and
    :meth:`strip` translate, so users and results always see the measured module's own names.
    """

    model: nn.Module
    prefix: str = ""
    measured: nn.Module | None = field(default=None, repr=False)

    def layers(self, names: Sequence[str]) -> list[str]:
        return [self.prefix + name for name in names]

    def params(self, params: Any) -> Any:
        """``params=`` of the callback (relative to the measured module) for ``model``."""
        if not self.prefix:
            return params
        if params is None:  # every trainable parameter of the measured module
            assert self.measured is not None
            return [p for p in self.measured.parameters() if p.requires_grad]
        if isinstance(params, str):
            return self.prefix + params
        if isinstance(params, (list, tuple)):
            return [self.prefix + p if isinstance(p, str) else p for p in params]
        return params  # Parameters and Modules select by identity

    def strip(self, result: GramResult) -> GramResult:
        if not self.prefix:
            return result
        cut = len(self.prefix)
        return replace(
            result,
            blocks={k[cut:] if k.startswith(self.prefix) else k: v for k, v in result.blocks.items()},
            paths={k[cut:] if k.startswith(self.prefix) else k: v for k, v in result.paths.items()},
        )


@contextmanager
def call_target(
    trainer: Trainer, pl_module: LightningModule, measured: nn.Module, attr: str | None
) -> Iterator[CallTarget]:
    """The :class:`CallTarget` for this trainer's strategy, valid inside the ``with`` block."""
    root = trainer.strategy.model if isinstance(trainer.strategy, FSDPStrategy) else None
    if root is None or root is measured or not is_fsdp1_wrapper(root):
        yield CallTarget(measured)
        return
    if measured is pl_module:
        yield CallTarget(root)
        return
    had_own_forward = "forward" in pl_module.__dict__
    own_forward = pl_module.__dict__.get("forward")
    pl_module.forward = measured.__call__  # type: ignore[method-assign]
    try:
        yield CallTarget(root, f"{attr}.", measured)
    finally:
        if had_own_forward:
            pl_module.forward = own_forward  # type: ignore[method-assign,assignment]
        else:
            del pl_module.forward
