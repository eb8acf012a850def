"""Pure-function stiffness analytics (Fort et al. 2019, arXiv:1901.09491): everything the paper
plots, computed from the per-example-gradient Gram matrix ``G[i, j] = g_i · g_j``, the labels and
pairwise distances. Torch only; tensors stay on their device.
"""

from lightning_stiffness.analytics.critical_length import (
    BinnedCurve,
    CriticalLength,
    binned_curve,
    critical_length,
    linear_fit_length,
    zero_crossing_length,
)
from lightning_stiffness.analytics.distance import (
    capture_representations,
    cosine_distance_matrix,
    cosine_similarity_matrix,
    input_distances,
    preprocess_inputs,
)
from lightning_stiffness.analytics.stiffness import (
    StiffnessSummary,
    class_stiffness_matrix,
    cosine_matrix,
    gradient_diversity,
    m_coherence,
    pair_mask,
    sign_matrix,
    split_block_summaries,
    stiffness_statistics,
    summarize,
    zero_gradient_mask,
)
from lightning_stiffness.analytics.superclass import SuperclassStats, reorder_by_superclass, superclass_stats

__all__ = [
    "BinnedCurve",
    "CriticalLength",
    "StiffnessSummary",
    "SuperclassStats",
    "binned_curve",
    "capture_representations",
    "class_stiffness_matrix",
    "cosine_distance_matrix",
    "cosine_matrix",
    "cosine_similarity_matrix",
    "critical_length",
    "gradient_diversity",
    "input_distances",
    "linear_fit_length",
    "m_coherence",
    "pair_mask",
    "preprocess_inputs",
    "reorder_by_superclass",
    "sign_matrix",
    "split_block_summaries",
    "stiffness_statistics",
    "summarize",
    "superclass_stats",
    "zero_crossing_length",
    "zero_gradient_mask",
]
