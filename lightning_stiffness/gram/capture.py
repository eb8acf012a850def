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
from collections.abc import Collection, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__: list[str] = []  # internal to the package: no public names

#: How the autograd graph refers to a tensor (see :func:`graph_key`).
GraphKey = Hashable


def graph_key(t: Tensor) -> GraphKey:
    """The identity of ``t`` as the autograd graph sees it: a leaf (a parameter, FSDP2's unsharded
    parameter, the zero tensor ``z``) by the tensor itself, a computed tensor (FSDP1's views of
    its all-gathered flat parameter) by the node and output index that produce it."""
    if t.grad_fn is None:
        return ("leaf", id(t))
    return (t.grad_fn, t.output_nr)


@dataclass
class ModuleCall:
    """One call of a hooked module: its input, the zero tensor added to its output, and the
    graph key of each parameter tensor the module held during the call (FSDP swaps in unsharded
    parameters for the forward; the autograd graph refers to those)."""

    inp: Tensor
    z: Tensor
    param_keys: dict[str, GraphKey] = field(default_factory=dict)


@dataclass
class CaptureRecord:
    calls: dict[str, list[ModuleCall]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


@contextmanager
def capture_calls(
    modules: dict[str, nn.Module], n: int, attributes: Mapping[str, Collection[str]]
) -> Iterator[CaptureRecord]:
    """Hook ``modules`` (name → module) for one forward over ``n`` examples, recording which
    tensors each call held under the parameter ``attributes`` of its module."""
    record = CaptureRecord(calls={name: [] for name in modules})
    # prepend: run before hooks of wrappers such as FSDP, which swap parameters back after the forward
    handles = [
        m.register_forward_hook(
            _make_hook(name, n, record, tuple(attributes.get(name, ()))), with_kwargs=True, prepend=True
        )
        for name, m in modules.items()
    ]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def _make_hook(name: str, n: int, record: CaptureRecord, attributes: tuple[str, ...]) -> Any:
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
        # getattr, not _parameters: FSDP1 replaces the registered parameters by plain tensor views
        held = {attr: getattr(module, attr, None) for attr in attributes}
        keys = {attr: graph_key(t) for attr, t in held.items() if isinstance(t, Tensor)}
        record.calls[name].append(ModuleCall(inp.detach(), z, keys))
        return output + z

    return hook


def count_parameter_uses(root: Tensor) -> Counter[GraphKey]:
    """How many autograd edges lead from ``root``'s graph into each tensor, keyed by
    :func:`graph_key`: one per use of a parameter (or of a parameter view) by a module call or
    functional op."""
    counts: Counter[GraphKey] = Counter()
    seen: set[Any] = set()
    stack = [root.grad_fn] if root.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for nxt, output_nr in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)
            if variable is not None:
                counts[("leaf", id(variable))] += 1
                continue
            counts[(nxt, output_nr)] += 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return counts
