"""Layer rules for the hook engine; importing this package registers all of them."""

from lightning_stiffness.gram.rules import (  # noqa: F401  (registration)
    attention,
    conv,
    conv_transpose,
    embedding,
    embedding_bag,
    hf_conv1d,
    hf_rms_norm,
    hf_scaled_embedding,
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
    register_rule_by_name,
    registered_names,
    registered_types,
)

__all__ = [
    "LayerRule",
    "PerExampleGrad",
    "find_rule",
    "register_rule",
    "register_rule_by_name",
    "registered_names",
    "registered_types",
]
