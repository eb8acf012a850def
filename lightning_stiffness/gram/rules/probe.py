"""Probing a module's forward on a small input, to check that a rule registered by class *name*
(an optional library, whose code may change between versions) matches what the class computes."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__: list[str] = []  # internal to the package: no public names


def forward_without_hooks(module: nn.Module, x: Tensor, replace: dict[str, Tensor] | None = None) -> Tensor | None:
    """``type(module).forward`` on ``x`` under ``no_grad``, optionally with some parameters replaced;
    no hook of ``module`` runs and ``module`` is not modified. ``None`` when the call fails or does
    not return a tensor."""
    target = module
    if replace:
        target = copy.copy(module)  # shallow: shares everything but the parameter table
        target._parameters = {**module._parameters, **replace}  # type: ignore[dict-item]
    try:
        with torch.no_grad():
            y = type(module).forward(target, x)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None
    return y if isinstance(y, Tensor) else None


def matches(y: Tensor | None, expected: Tensor) -> bool:
    """``y`` equals ``expected`` up to rounding in their dtype."""
    if y is None or y.shape != expected.shape:
        return False
    tol = 64 * torch.finfo(expected.dtype).eps
    return bool(torch.allclose(y.to(expected.dtype), expected, rtol=tol, atol=tol))
