"""Shared helpers for the Gram-engine tests: float64 copies, independent references, error metrics."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run with one intra-op thread: the models are tiny, and on a shared 2-core machine OpenMP
    spin-waiting makes multi-threaded tiny ops many times slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_double(obj: Any) -> Any:
    """Cast every floating tensor in a (nested) input structure to float64."""
    if isinstance(obj, Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_double(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_double(v) for v in obj)
    return obj


def double_model(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` (the original is untouched)."""
    return copy.deepcopy(model).double()


def rel_err(a: Tensor, b: Tensor) -> float:
    """Relative Frobenius error ``‖a - b‖ / ‖b‖`` computed in float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    denom = b64.norm()
    assert denom > 0, "reference Gram is zero: the comparison would be vacuous"
    return float((a64 - b64).norm() / denom)


def ce_loss(outputs: Any, targets: Tensor) -> Tensor:
    logits = outputs if isinstance(outputs, Tensor) else outputs.logits
    return F.cross_entropy(logits, targets, reduction="none")


def independent_jacobian(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    params: Iterable[nn.Parameter] | None = None,
    loss_fn: Callable[[Any, Tensor], Tensor] = ce_loss,
) -> Tensor:
    """Per-example gradients by plain ``torch.autograd.grad``, one example at a time, without the library.

    The model is put in eval mode for the computation and its flags are restored afterwards.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    plist = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    rows = []
    try:
        with torch.enable_grad():
            for i in range(inputs.shape[0]):
                loss = loss_fn(model(inputs[i : i + 1]), targets[i : i + 1]).sum()
                grads = torch.autograd.grad(loss, plist, allow_unused=True)
                rows.append(
                    torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, plist)])
                )
    finally:
        for m, t in flags:
            m.training = t
    return torch.stack(rows)


def independent_gram(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    params: Iterable[nn.Parameter] | None = None,
    loss_fn: Callable[[Any, Tensor], Tensor] = ce_loss,
) -> Tensor:
    """``J Jᵀ`` from :func:`independent_jacobian`."""
    j = independent_jacobian(model, inputs, targets, params, loss_fn)
    return j @ j.T
