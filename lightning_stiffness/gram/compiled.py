"""Submodules compiled with ``torch.compile`` (``self.net = torch.compile(nn.Sequential(...))``).

A compiled submodule is an ``OptimizedModule`` that runs a captured graph: the capture hooks on
the modules inside it would not fire, so every parameter inside would go to the slow fallback.
The engine measures through the original module instead: for the duration of the measurement
each compiled submodule is replaced in its parent by its ``_orig_mod`` (the same parameters,
run eagerly), and put back afterwards. Parameter names are unaffected: the engine reports them
without the ``_orig_mod.`` segment (:func:`~lightning_stiffness.gram.sharding.clean_name`),
which is how they read with the swap in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is ``torch.compile``'s wrapper around an ``_orig_mod``."""
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


@contextmanager
def eager_submodules(model: nn.Module) -> Iterator[None]:
    """Replace every compiled submodule of ``model`` by its original module; restore on exit."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        pending = True
        while pending:  # a compiled module may hold compiled submodules of its own
            pending = False
            for parent in list(model.modules()):
                for name, child in list(parent._modules.items()):
                    if child is not None and is_compiled(child):
                        swapped.append((parent, name, child))
                        parent._modules[name] = child._orig_mod  # type: ignore[assignment]
                        pending = True
        yield
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child
