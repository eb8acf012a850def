"""Capture pass: one forward with hooks, one backward to the layer outputs only.

Each hooked module call records its (detached) input and adds a zero tensor ``z`` to its
output. ``∂(Σ_n ℓ_n)/∂z`` is then the per-example backprop ``b_n = ∂ℓ_n/∂y_n`` (examples
are independent), obtained for every layer in one ``torch.autograd.grad`` call that computes
no weight gradient, never writes ``.grad`` and never fires DDP's reducer. Adding ``z`` rather
than differentiating the output itself keeps this correct when a later op (``ReLU(inplace=
True)``) overwrites the output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

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
    #: whole-call capture only (:func:`_make_call_hook`): every argument, the output leaves that got a
    #: slice of ``z`` (``None`` for the others), and how often the call itself used each parameter
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output_shapes: list[tuple[int, ...] | None] = field(default_factory=list)
    local_uses: dict[str, int] | None = None

    def grad_outputs(self, grad_z: Tensor) -> list[Tensor | None]:
        """Split a whole-call ``∂L/∂z`` into one backprop per output leaf (``None``: no slice)."""
        out: list[Tensor | None] = []
        offset = 0
        for shape in self.output_shapes:
            if shape is None:
                out.append(None)
                continue
            size = math.prod(shape)
            out.append(grad_z[offset : offset + size].reshape(shape))
            offset += size
        return out


@dataclass
class CaptureRecord:
    calls: dict[str, list[ModuleCall]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


@contextmanager
def capture_calls(
    modules: dict[str, nn.Module],
    n: int,
    attributes: Mapping[str, Collection[str]],
    whole_call: Mapping[str, Callable[..., str | None]] | None = None,
) -> Iterator[CaptureRecord]:
    """Hook ``modules`` (name → module) for one forward over ``n`` examples, recording which
    tensors each call held under the parameter ``attributes`` of its module. Modules named in
    ``whole_call`` (name → check of the call, returning a problem or ``None``) record every
    argument and get a zero tensor on every output (:func:`_make_call_hook`)."""
    record = CaptureRecord(calls={name: [] for name in modules})
    whole_call = whole_call or {}

    def make(name: str) -> Any:
        attrs = tuple(attributes.get(name, ()))
        if name in whole_call:
            return _make_call_hook(name, n, record, attrs, whole_call[name])
        return _make_hook(name, n, record, attrs)

    # prepend: run before hooks of wrappers such as FSDP, which swap parameters back after the forward
    handles = [m.register_forward_hook(make(name), with_kwargs=True, prepend=True) for name, m in modules.items()]
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


def _make_call_hook(
    name: str, n: int, record: CaptureRecord, attributes: tuple[str, ...], check: Callable[..., str | None]
) -> Any:
    """Hook for modules whose call is not ``(tensor) -> tensor`` (attention, RNNs, bags with
    weights): records all arguments and adds one slice of a single flat zero tensor ``z`` to each
    floating output leaf, so ``∂L/∂z`` holds the backprop of every output. Also counts how often
    the call's own graph (from its outputs back to its arguments) uses each parameter: an RNN's
    recurrent weight enters once per step."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        problem = check(module, args, kwargs, output, n)
        leaves, spec = tree_flatten(output)
        slots = [isinstance(t, Tensor) and t.is_floating_point() and t.requires_grad for t in leaves]
        if problem is None and not any(slots):
            problem = "none of its outputs depends on its parameters"
        if problem is not None:
            record.problems[name] = problem
            return None
        first = next(t for t, used in zip(leaves, slots) if used)
        total = sum(t.numel() for t, used in zip(leaves, slots) if used)
        z = torch.zeros(total, dtype=first.dtype, device=first.device, requires_grad=True)
        held = {attr: _nested_attribute(module, attr) for attr in attributes}
        keys = {attr: graph_key(t) for attr, t in held.items() if isinstance(t, Tensor)}
        arg_tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        local = _local_uses([t for t, used in zip(leaves, slots) if used], arg_tensors, keys)
        new: list[Any] = []
        shapes: list[tuple[int, ...] | None] = []
        offset = 0
        for t, used in zip(leaves, slots):
            if not used:
                new.append(t)
                shapes.append(None)
                continue
            new.append(t + z[offset : offset + t.numel()].view(t.shape).to(t.dtype))
            shapes.append(tuple(t.shape))
            offset += t.numel()
        detach = lambda v: v.detach() if isinstance(v, Tensor) else v  # noqa: E731
        inp = arg_tensors[0].detach() if arg_tensors else z.detach()
        call = ModuleCall(inp, z, keys, tree_map(detach, args), tree_map(detach, kwargs), shapes, local)
        record.calls[name].append(call)
        return tree_unflatten(new, spec)

    return hook


def _nested_attribute(module: nn.Module, dotted: str) -> Any:
    """``module.a.b`` for ``"a.b"`` (``None`` when absent)."""
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _local_uses(outputs: list[Tensor], inputs: list[Tensor], keys: dict[str, GraphKey]) -> dict[str, int]:
    """Autograd edges into each parameter key from the graph between ``inputs`` and ``outputs``."""
    stop = {t.grad_fn for t in inputs if t.grad_fn is not None}
    wanted = {key: attr for attr, key in keys.items()}
    counts: Counter[str] = Counter()
    seen: set[Any] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None and t.grad_fn not in stop]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, output_nr in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)
            key = ("leaf", id(variable)) if variable is not None else (nxt, output_nr)
            if key in wanted:
                counts[wanted[key]] += 1
            if variable is None and nxt not in stop:
                stack.append(nxt)
    return dict(counts)
