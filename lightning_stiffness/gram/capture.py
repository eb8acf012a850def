"""Capture pass: one forward with hooks, one backward to the layer outputs only.

Each hooked module call records its (detached) input and its output ``y``.
``∂(Σ_n ℓ_n)/∂y`` is then the per-example backprop ``b_n = ∂ℓ_n/∂y_n`` (examples are
independent), obtained for every layer in one ``torch.autograd.grad`` call that computes no
weight gradient, never writes ``.grad`` and never fires DDP's reducer. When a later op
overwrites an output in place (``ReLU(inplace=True)`` after a convolution or a norm), the
gradient with respect to the overwritten tensor is no longer the layer's backprop: the output's
version counter shows it (:meth:`CaptureRecord.overwritten`), and such modules instead add a
zero tensor ``z`` to their output and differentiate ``z`` (:data:`OUTPUT_OVERWRITTEN` remembers
them, so the capture is repeated once per model, not per call). Differentiating the output
itself saves filling and adding a zero tensor of every output's size (4-5 ms of 65-70 ms on
the paper's small CNN).

Which axis of a call holds the examples is not guessed from sizes: a second, shape-only trace
with a different number of examples (:func:`record_shapes`) shows which axis follows the batch
size (:func:`example_axis`). An axis of size N that stays put when the batch shrinks (``T`` of
``wpe(arange(T))``, ``M`` learned latent queries, ``T`` of a time-first layer) is not it.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

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
    """One call of a hooked module: its input, its output (or the zero tensor added to it), and the
    graph key of each parameter tensor the module held during the call (FSDP swaps in unsharded
    parameters for the forward; the autograd graph refers to those).

    ``axis``: the dimension of ``inp`` and of the output that indexes the examples; ``None`` until
    :func:`resolve_example_axes` has found it from a second trace."""

    inp: Tensor
    #: the tensor whose gradient is the call's backprop: its output, or a zero tensor added to it
    z: Tensor
    param_keys: dict[str, GraphKey] = field(default_factory=dict)
    axis: int | None = 0
    #: ``z``'s version counter when ``z`` is the output itself (None: ``z`` is a zero tensor)
    version: int | None = None
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

    def overwritten(self) -> list[str]:
        """Modules with a call whose output was changed in place after the call (its version
        counter moved): the gradient with respect to that tensor is not the call's backprop."""
        return [
            name
            for name, calls in self.calls.items()
            if any(c.version is not None and c.z._version != c.version for c in calls)
        ]


#: Modules whose output a later operation overwrites in place (seen by
#: :meth:`CaptureRecord.overwritten`): their calls add a zero tensor to the output instead.
OUTPUT_OVERWRITTEN: weakref.WeakSet[nn.Module] = weakref.WeakSet()


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
        inp = _first_tensor(args, kwargs)
        if not isinstance(inp, Tensor) or not isinstance(output, Tensor) or output.dim() == 0:
            record.problems[name] = "its call signature is not (tensor) -> tensor"
            return None
        broadcast = isinstance(module, nn.Embedding) and inp.dim() > 0 and inp.shape[0] == 1 and n > 1
        axis: int | None = 0
        if broadcast:
            # e.g. Hugging Face position ids of shape (1, L): expand so each example gets its own row
            output = output.expand(n, *output.shape[1:])
        elif n == 1:
            # one example owns every position of a call whose leading size is 1
            if inp.dim() == 0 or inp.shape[0] != 1 or output.shape[0] != 1:
                record.problems[name] = f"its input has leading size {tuple(inp.shape)[:1]} for N=1 example"
                return None
        elif not candidate_axes(tuple(inp.shape), tuple(output.shape), n):
            record.problems[name] = (
                f"no axis of its input {tuple(inp.shape)} and output {tuple(output.shape)} has the size "
                f"N={n} of the example axis"
            )
            return None
        else:
            axis = None  # which of the size-N axes holds the examples: decided by a second trace
        # getattr, not _parameters: FSDP1 replaces the registered parameters by plain tensor views
        held = {attr: getattr(module, attr, None) for attr in attributes}
        keys = {attr: graph_key(t) for attr, t in held.items() if isinstance(t, Tensor)}
        if output.requires_grad and not broadcast and module not in OUTPUT_OVERWRITTEN:
            record.calls[name].append(ModuleCall(inp.detach(), output, keys, axis, version=output._version))
            return None
        z = torch.zeros_like(output, requires_grad=True)
        record.calls[name].append(ModuleCall(inp.detach(), z, keys, axis))
        return output + z

    return hook


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else next(iter(kwargs.values()), None)


#: Per call of a module, in call order: the shapes of its input and output.
CallShapes = list[tuple[tuple[int, ...], tuple[int, ...]]]


@contextmanager
def record_shapes(modules: dict[str, nn.Module]) -> Iterator[dict[str, CallShapes]]:
    """Hook ``modules`` for one forward, recording only the input and output shape of every call."""
    shapes: dict[str, CallShapes] = {name: [] for name in modules}

    def make(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            inp = _first_tensor(args, kwargs)
            if isinstance(inp, Tensor) and isinstance(output, Tensor):
                shapes[name].append((tuple(inp.shape), tuple(output.shape)))
            else:
                shapes[name].append(((), ()))

        return hook

    handles = [m.register_forward_hook(make(name), with_kwargs=True, prepend=True) for name, m in modules.items()]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def candidate_axes(inp: Sequence[int], out: Sequence[int], n: int) -> list[int]:
    """Dimensions ``d`` with ``inp[d] == out[d] == n``: where the examples may be."""
    return [d for d in range(min(len(inp), len(out))) if inp[d] == n and out[d] == n]


def example_axis(
    first: tuple[Sequence[int], Sequence[int]], second: tuple[Sequence[int], Sequence[int]], n: int, n_other: int
) -> int | None:
    """The one dimension that holds ``n`` examples in the ``first`` trace and ``n_other != n`` in
    the ``second`` (input and output alike), or ``None`` when there is not exactly one.

    An axis that does not carry the examples keeps its size when only the number of examples
    changes, so it cannot be ``n`` in one trace and ``n_other`` in the other, whatever sizes
    happen to coincide."""
    (in1, out1), (in2, out2) = first, second
    if len(in1) != len(in2) or len(out1) != len(out2):
        return None
    found = [d for d in candidate_axes(in1, out1, n) if d in candidate_axes(in2, out2, n_other)]
    return found[0] if len(found) == 1 else None


def resolve_example_axes(
    record: CaptureRecord, other: dict[str, CallShapes] | str, n: int, n_other: int, movable: Mapping[str, bool]
) -> None:
    """Set the example axis of every pending call of ``record`` from the ``other`` trace (with
    ``n_other`` examples), or record why a module has none that its layer rule can use.

    ``other`` is a message instead when that trace failed. ``movable[name]``: the module's rule
    accepts the examples on any axis (it is moved to the front), otherwise only on axis 0."""
    for name, calls in record.calls.items():
        pending = [c for c in calls if c.axis is None]
        if not pending or name in record.problems:
            continue
        if isinstance(other, str):
            record.problems[name] = f"its example axis is unknown: {other}"
            continue
        if len(other[name]) != len(calls):
            record.problems[name] = (
                f"its example axis is unknown: it ran {len(calls)}x with N={n} examples but "
                f"{len(other[name])}x with N={n_other}"
            )
            continue
        for call, shapes in zip(calls, other[name]):
            if call.axis is not None:
                continue
            first = (tuple(call.inp.shape), tuple(call.z.shape))
            axis = example_axis(first, shapes, n, n_other)
            if axis is None:
                record.problems[name] = (
                    f"no axis of its input and output follows the number of examples (shapes {first[0]} -> "
                    f"{first[1]} with N={n}, {shapes[0]} -> {shapes[1]} with N={n_other}): its example axis "
                    "is unknown (e.g. a position embedding of torch.arange(T) or learned latent queries, "
                    "whose rows every example shares)"
                )
                break
            if axis != 0 and not movable.get(name, False):
                record.problems[name] = (
                    f"its examples are on axis {axis} (shapes {first[0]} -> {first[1]}, time-first?); its "
                    "layer rule needs them on axis 0"
                )
                break
            call.axis = axis


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
        # the rule knows where its module keeps the examples (batch_first), so no axis is resolved
        call = ModuleCall(
            inp,
            z,
            keys,
            axis=0,
            args=tree_map(detach, args),
            kwargs=tree_map(detach, kwargs),
            output_shapes=shapes,
            local_uses=local,
        )
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
