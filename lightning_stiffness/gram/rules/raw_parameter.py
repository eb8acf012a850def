"""Parameters used directly in a module's ``forward``: ``cls_token``, ``pos_embed``, layer scales.

Such a parameter ``P`` has no layer of its own; it meets the activations in one broadcasting op
— ``P.expand(N, …)``, ``x + P``, ``x * P.reshape(1, -1, 1, 1)`` — whose output carries the
example axis (dim 0) while ``P`` broadcasts along it. During the capture forward a
``TorchFunctionMode`` watches ``P`` and the tensors derived from ``P`` alone by view and cast ops
(``s = f(P)``); at each broadcasting use it replaces ``s`` by ``s + z`` with a zero tensor ``z`` of
shape ``(N, *s.shape)`` (``s`` aligned to the output's rank), which changes no value. Row ``n`` of
``z`` then feeds example ``n`` only, so ``∂(Σ_m ℓ_m)/∂z_n = ∂ℓ_n/∂s`` and, through the
parameter-only chain, ``∂ℓ_n/∂P = J_f(P)ᵀ ∂ℓ_n/∂z_n`` (summed over the uses of ``P``). Exact and
materialised (``N × |P|``).

The engine accepts the result only when every edge into ``P`` (and into each derived ``s``) in
the loss graph belongs to a watched op that reaches the loss; any other use — ``torch.cat`` of
``P`` with activations, a matmul, an op outside the lists below — leaves ``P`` to the exact
fallback. Like the module capture, this assumes dim 0 of the broadcast output is the example
axis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from lightning_stiffness.gram.capture import GraphKey, graph_key

__all__: list[str] = []  # rules register themselves; nothing here is imported by users

_T = torch.Tensor
#: Ops that turn a parameter-only tensor into another one without reading activations. ``expand``
#: is not one of them: it is accepted only as the broadcasting use along dim 0 (``cls.expand(N, …)``),
#: so a copy expanded along another axis (``cls.expand(-1, N, -1)``, sequence-first) is never
#: mistaken for a parameter-only tensor.
DERIVING_OPS: frozenset[Callable[..., Any]] = frozenset(
    {
        _T.reshape, _T.view, _T.unsqueeze, _T.squeeze, _T.permute, _T.transpose, _T.flatten, _T.contiguous,
        _T.to, _T.type_as, _T.float, _T.double, _T.half, _T.bfloat16, _T.__getitem__, _T.clone, _T.t,
        torch.reshape, torch.unsqueeze, torch.squeeze, torch.permute, torch.transpose, torch.flatten, torch.t,
    }
)  # fmt: skip
#: Elementwise ops whose output has the broadcast shape of their tensor arguments.
ELEMENTWISE_OPS: frozenset[Callable[..., Any]] = frozenset(
    {
        _T.__add__, _T.__radd__, _T.__sub__, _T.__rsub__, _T.__mul__, _T.__rmul__, _T.__truediv__,
        _T.add, _T.sub, _T.mul, _T.div, _T.add_, _T.sub_, _T.mul_, _T.div_, _T.__iadd__, _T.__imul__,
        torch.add, torch.sub, torch.mul, torch.div,
    }
)  # fmt: skip


@dataclass
class RawUse:
    """One broadcasting use of a watched tensor ``source`` (the parameter or ``f(P)``)."""

    name: str
    source: Tensor
    substitute: Tensor  # source.reshape(aligned) + z, what the op received instead
    z: Tensor


@dataclass
class RawCapture:
    """What the watching mode recorded during one forward."""

    params: dict[str, Tensor]
    uses: list[RawUse] = field(default_factory=list)
    #: per watched tensor: (name, tensor, the watched ops that read it: (their output, how often))
    sources: dict[int, tuple[str, Tensor]] = field(default_factory=dict)
    reads: dict[int, list[tuple[Tensor, int]]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def coverage_problem(self, name: str, uses: Counter[GraphKey]) -> str | None:
        """``None`` when every use of parameter ``name`` in the loss graph went through a watched op."""
        if name in self.problems:
            return self.problems[name]
        for key, (owner, tensor) in self.sources.items():
            if owner != name:
                continue
            seen = uses.get(graph_key(tensor), 0)
            watched = sum(count for out, count in self.reads.get(key, []) if uses.get(graph_key(out), 0) > 0)
            if seen != watched:
                return f"{name} is used {seen}x in the graph but {watched}x by broadcasting ops"
        if not any(use.name == name and uses.get(graph_key(use.substitute), 0) > 0 for use in self.uses):
            return f"{name} does not meet the activations in a broadcasting op"
        return None

    def zs(self, names: set[str], uses: Counter[GraphKey]) -> list[Tensor]:
        """The zero tensors of the uses of ``names`` that reach the loss."""
        return [u.z for u in self.uses if u.name in names and uses.get(graph_key(u.substitute), 0) > 0]

    def per_example_grads(self, name: str, backprops: dict[int, Tensor], dtype: torch.dtype) -> list[Tensor]:
        """``(N, |P|)`` per-example gradients of ``name``, one per use (their sum is the answer)."""
        param = self.params[name]
        out = []
        for use in self.uses:
            if use.name != name or id(use.z) not in backprops:
                continue
            grad = backprops[id(use.z)]
            grad = grad.reshape(grad.shape[0], *use.source.shape)
            if use.source is not param:  # back through the parameter-only chain s = f(P), per example
                (grad,) = torch.autograd.grad(
                    use.source, param, grad.to(use.source.dtype), retain_graph=True, is_grads_batched=True
                )
            out.append(grad.reshape(grad.shape[0], -1).to(dtype))
        return out


class _Watch(TorchFunctionMode):
    def __init__(self, record: RawCapture, n: int) -> None:
        super().__init__()
        self.record, self.n = record, n

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        watched = [i for i, a in enumerate(flat) if isinstance(a, Tensor) and id(a) in self.record.sources]
        if not watched:
            return func(*args, **kwargs)
        names = {self.record.sources[id(flat[i])][0] for i in watched}
        shape = self._broadcast_shape(func, flat, watched)
        if shape is not None:
            return self._substitute(func, flat, spec, watched, shape)
        out = func(*args, **kwargs)
        if any(out is flat[i] for i in watched):  # a no-op (.contiguous(), .to(own dtype)) returns its input
            return out
        # .to(other) and .type_as(other) read only other's dtype and device
        parameter_only = func in (_T.to, _T.type_as) or all(
            not isinstance(a, Tensor) for i, a in enumerate(flat) if i not in watched
        )
        deriving = func in DERIVING_OPS or func in ELEMENTWISE_OPS
        if deriving and parameter_only and isinstance(out, Tensor) and len(names) == 1:
            # a view, a cast or arithmetic with Python numbers: still a function of P alone
            self._read(flat, watched, out)
            self.record.sources[id(out)] = (names.pop(), out)
            return out
        if (isinstance(out, Tensor) and out.requires_grad) or func in ELEMENTWISE_OPS:
            label = getattr(func, "__name__", str(func))
            for name in names:
                self.record.problems.setdefault(name, f"{name} is used by {label} in a way no rule covers")
        return out

    def _broadcast_shape(self, func: Any, flat: list[Any], watched: list[int]) -> tuple[int, ...] | None:
        """The output shape when ``func`` broadcasts every watched tensor along an example axis of size N."""
        try:
            if func in ELEMENTWISE_OPS:
                shape = tuple(torch.broadcast_shapes(*[a.shape for a in flat if isinstance(a, Tensor)]))
            elif func in (_T.expand, _T.expand_as) and watched == [0]:
                shape = self._expanded_shape(func, flat)
            else:
                return None
        except (RuntimeError, IndexError, AttributeError):
            return None
        if not shape or shape[0] != self.n:
            return None
        for i in watched:
            t = flat[i]
            if t.dim() > len(shape) or (t.dim() == len(shape) and t.shape[0] != 1):
                return None
            aligned = (1,) * (len(shape) - t.dim()) + tuple(t.shape)
            if func in (_T.expand, _T.expand_as) and aligned[1:] != shape[1:]:
                return None  # an expand must copy along the example axis only (not cls.expand(T, N, -1))
        return shape

    @staticmethod
    def _expanded_shape(func: Any, flat: list[Any]) -> tuple[int, ...]:
        if func is _T.expand_as:
            return tuple(flat[1].shape)
        sizes: list[int] = []
        for a in flat[1:]:
            sizes.extend([a] if isinstance(a, int) else list(a) if isinstance(a, (tuple, list)) else [])
        offset = len(sizes) - flat[0].dim()
        return tuple(s if s != -1 else flat[0].shape[i - offset] for i, s in enumerate(sizes))

    def _substitute(self, func: Any, flat: list[Any], spec: Any, watched: list[int], shape: tuple[int, ...]) -> Any:
        new = list(flat)
        for i in watched:
            source = flat[i]
            aligned = (1,) * (len(shape) - source.dim()) + tuple(source.shape)
            z = torch.zeros((self.n, *aligned[1:]), dtype=source.dtype, device=source.device, requires_grad=True)
            new[i] = source.reshape(aligned) + z
            name = self.record.sources[id(source)][0]
            self.record.uses.append(RawUse(name, source, new[i], z))
            self.record.reads.setdefault(id(source), []).append((new[i], 1))
        args, kwargs = tree_unflatten(new, spec)
        return func(*args, **kwargs)

    def _read(self, flat: list[Any], watched: list[int], out: Tensor) -> None:
        for key, count in Counter(id(flat[i]) for i in watched).items():
            self.record.reads.setdefault(key, []).append((out, count))


@contextmanager
def capture_raw_parameters(params: Mapping[str, Tensor], n: int) -> Iterator[RawCapture]:
    """Watch ``params`` (name → parameter) during one forward over ``n`` examples."""
    record = RawCapture(dict(params), sources={id(p): (name, p) for name, p in params.items()})
    if not params:
        yield record
        return
    with _Watch(record, n):
        yield record
