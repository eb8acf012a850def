"""The exact per-example-gradient Gram engine (probe batch → capture → per-layer Gram)."""

from lightning_stiffness.gram.api import (
    GramResult,
    per_example_gram,
    per_example_gram_blocks,
    select_parameters,
    unwrap_model,
)
from lightning_stiffness.gram.rules import LayerRule, find_rule, register_rule

__all__ = [
    "GramResult",
    "LayerRule",
    "find_rule",
    "per_example_gram",
    "per_example_gram_blocks",
    "register_rule",
    "select_parameters",
    "unwrap_model",
]
