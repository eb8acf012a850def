"""The layer-rule interface and registry (one small module per layer type, as in Opacus).

A rule turns what the capture pass recorded for one call of a module — its input and the
gradient of the summed per-example losses with respect to its output — into per-example
gradients of the module's own parameters, in one of two exact forms:

* a list of :class:`~lightning_stiffness.gram.factors.KroneckerTerm` (``g_n = Σ_t u_nt ⊗ v_nt``),
  whose Gram the engine computes by the kernel trick or by materialising, whichever is cheaper;
* a dense ``(N, D)`` tensor, for parameters whose per-example gradients are small anyway
  (biases, normalisation scales).

Adding a layer type is one new file with a subclass of :class:`LayerRule` decorated with
:func:`register_rule`, imported in ``rules/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor, nn

from lightning_stiffness.gram.factors import KroneckerTerm

__all__ = [
    "LayerRule",
    "PerExampleGrad",
    "find_rule",
    "register_rule",
    "register_rule_by_name",
    "registered_names",
    "registered_types",
]

PerExampleGrad = list[KroneckerTerm] | Tensor


class LayerRule:
    """Exact per-example gradients of one module type's parameters from (input, grad_output).

    ``parameter_names``: the parameter attributes the rule returns gradients for. A module may
    own others (``weight_norm``'s ``weight_g``/``weight_v``); the engine sends those to the exact
    fallback instead of treating them as unused.

    ``example_axis_movable``: see below; rules whose layout fixes axis 0 as the batch (conv,
    GroupNorm, BatchNorm) leave it False, and modules whose examples are elsewhere fall back.
    """

    parameter_names: tuple[str, ...] = ("weight", "bias")
    #: True when the rule treats every input/output axis but the trailing feature axes as
    #: positions (Linear, Embedding, LayerNorm), so examples found on another axis than the first
    #: (a time-first layer's ``(T, N, d)``) can be moved to the front before calling it.
    example_axis_movable: bool = False

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this particular module instance cannot use the rule (``None``: it can)."""
        return None

    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        """Map parameter attribute name (``"weight"``, ``"bias"``) to its per-example gradient."""
        raise NotImplementedError


_REGISTRY: dict[type[nn.Module], LayerRule] = {}
#: Rules for classes of optional third-party libraries, keyed by ``"module.QualName"``.
_BY_NAME: dict[str, LayerRule] = {}

R = TypeVar("R", bound=type[LayerRule])


def register_rule(*module_types: type[nn.Module]) -> Callable[[R], R]:
    """Class decorator registering a rule for ``module_types`` (exact types and subclasses
    that do not override ``forward``)."""

    def decorate(rule_cls: R) -> R:
        rule = rule_cls()
        for module_type in module_types:
            _REGISTRY[module_type] = rule
        return rule_cls

    return decorate


def register_rule_by_name(*qualified_names: str) -> Callable[[R], R]:
    """Like :func:`register_rule`, for classes of optional libraries (Hugging Face
    ``transformers``) named ``"package.module.ClassName"``: matched by name when a module is looked
    up, so registering never imports the library (whose models exist only once it is imported)."""

    def decorate(rule_cls: R) -> R:
        rule = rule_cls()
        for name in qualified_names:
            _BY_NAME[name] = rule
        return rule_cls

    return decorate


def _registered(cls: type) -> LayerRule | None:
    return _REGISTRY.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")


def find_rule(module: nn.Module) -> LayerRule | None:
    """The rule registered for ``module``'s class or the nearest base class whose ``forward``
    it still uses; ``None`` when no rule applies (the engine then falls back to vmap)."""
    cls = type(module)
    for base in cls.__mro__:
        rule = _registered(base)
        if rule is not None:
            return rule if getattr(cls, "forward", None) is getattr(base, "forward", None) else None
    return None


def registered_types() -> list[type[nn.Module]]:
    """Module types with a registered rule (for documentation and error messages)."""
    return list(_REGISTRY)


def registered_names() -> list[str]:
    """Qualified class names of optional libraries with a registered rule."""
    return list(_BY_NAME)
