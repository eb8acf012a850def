"""Layer rules for the kernel engine; importing this package registers all of them."""

from lightning_stiffness.gram.rules import conv, embedding, linear, norm  # noqa: F401  (registration)
from lightning_stiffness.gram.rules.base import (
    LayerRule,
    PerExampleGrad,
    find_rule,
    register_rule,
    registered_types,
)

__all__ = ["LayerRule", "PerExampleGrad", "find_rule", "register_rule", "registered_types"]
