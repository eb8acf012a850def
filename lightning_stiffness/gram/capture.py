"""Capture pass: one forward with hooks, one backward to the layer outputs only.

Each hooked module call records its (detached) input and adds a zero tensor ``z`` to its
output. ``∂(Σ_n ℓ_n)/∂z`` is then the per-example backprop ``b_n = ∂ℓ_n/∂y_n`` (examples
are independent), obtained for every layer in one ``torch.autograd.grad`` call that computes
no weight gradient, never writes ``.grad`` and never fires DDP's reducer. Adding ``z`` rather
than differentiating the output itself keeps this correct when a later op (``ReLU(inplace=
True)``) overwrites the output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class ModuleCall:
    """One call of a hooked module: its input, the zero tensor added to its output, and the
    ``id`` of each parameter tensor the module held during the call (FSDP swaps in unsharded
    parameters for the forward; the autograd graph refers to those)."""

    inp: Tensor
    z: Tensor
    param_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class CaptureRecord:
    calls: dict[str, list[ModuleCall]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


@contextmanager
def capture_calls(modules: dict[str, nn.Module], n: int) -> Iterator[CaptureRecord]:
    """Hook ``modules`` (name → module) for one forward over ``n`` examples."""
    record = CaptureRecord(calls={name: [] for name in modules})
    # prepend: run before hooks of wrappers such as FSDP, which swap parameters back after the forward
    handles = [
        m.register_forward_hook(_make_hook(name, n, record), with_kwargs=True, prepend=True)
        for name, m in modules.items()
    ]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def _make_hook(name: str, n: int, record: CaptureRecord) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        inp = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(inp, Tensor) or not isinstance(output, Tensor) or output.dim() == 0:
            record.problems[name] = "its call signature is not (tensor) -> tensor"
            return None
        broadcast = isinstance(module, nn.Embedding) and inp.dim() > 0 and inp.shape[0] == 1 and n > 1
        if broadcast:
            # e.g. Hugging Face position ids of shape (1, L): expand so each example gets its own row
            output = output.expand(n, *output.shape[1:])
        elif inp.dim() == 0 or inp.shape[0] != n or output.shape[0] != n:
            record.problems[name] = (
                f"its input has leading size {tuple(inp.shape)[:1]} instead of the number of examples "
                f"N={n} (the example axis must come first)"
            )
            return None
        z = torch.zeros_like(output, requires_grad=True)
        param_ids = {attr: id(t) for attr, t in module._parameters.items() if t is not None}
        record.calls[name].append(ModuleCall(inp.detach(), z, param_ids))
        return output + z

    return hook


def count_parameter_uses(root: Tensor) -> Counter[int]:
    """How many autograd edges lead from ``root``'s graph into each leaf tensor (keyed by
    ``id``): one per use of a parameter by a module call or functional op."""
    counts: Counter[int] = Counter()
    seen: set[Any] = set()
    stack = [root.grad_fn] if root.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)
            if variable is not None:
                counts[id(variable)] += 1
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return counts
