"""Layer rules for the kernel engine; importing this package registers all of them."""

from lightning_stiffness.gram.rules import (  # noqa: F401  (registration)
    attention,
    conv,
    conv_transpose,
    embedding,
    embedding_bag,
    instance_norm,
    linear,
    local_modules,
    norm,
    norm2d,
    prelu,
    recurrent,
    timm_norm,
)
from lightning_stiffness.gram.rules.base import (
    LayerRule,
    PerExampleGrad,
    find_rule,
    register_rule,
    registered_types,
)

__all__ = ["LayerRule", "PerExampleGrad", "find_rule", "register_rule", "registered_types"]
